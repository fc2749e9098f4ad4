// Jobs started from the form with RunJob. The call that starts a job also
// carries its output and its end, so the job's page reads the rest of that
// call instead of opening a second stream. A run no page takes soon after
// its start is dropped (the job goes on; its page follows it the usual way).

import { ApiError, stream } from "./api.js";

const UNCLAIMED_MS = 10000;
// A run whose page has not taken it keeps at most this much output (base64
// text); past it the run is dropped, and the page follows the job with
// StreamJobOutput from byte 0.
const MAX_PENDING_CHARS = 8 << 20;
const runs = new Map();

// startRun starts job with RunJob and resolves with the job's status once
// the scheduler started it; the rest of the call waits for takeRun. It
// rejects as call() does when the job is refused. signal aborts the call
// only before the start: afterwards the run belongs to the job's page.
export function startRun(job, { signal } = {}) {
  return new Promise((resolve, reject) => {
    const aborter = new AbortController();
    const run = { pending: [], pendingChars: 0, onMessage: null, ended: null, abort: () => aborter.abort() };
    let started = null;
    signal?.addEventListener("abort", () => { if (!started) aborter.abort(); });
    run.ended = stream("RunJob", { job }, (msg) => {
      if (started) {
        if (run.onMessage) run.onMessage(msg);
        else if (!run.dropped) {
          run.pending.push(msg);
          run.pendingChars += msg.chunk?.data?.length || 0;
          if (run.pendingChars > MAX_PENDING_CHARS) drop(started.jobId, run);
        }
        return;
      }
      if (!msg.started) return;
      started = msg.started;
      run.started = started;
      runs.set(started.jobId, run);
      setTimeout(() => {
        if (runs.get(started.jobId) === run) drop(started.jobId, run);
      }, UNCLAIMED_MS);
      resolve(started);
    }, { signal: aborter.signal });
    run.ended.then(
      () => { if (!started) reject(new ApiError("unavailable", "the scheduler ended the run before the job started")); },
      (err) => { if (!started) reject(err); });
  });
}

// drop ends a run no page took: its job goes on, and its page follows it
// with StreamJobOutput.
function drop(jobId, run) {
  if (runs.get(jobId) === run) runs.delete(jobId);
  run.dropped = true;
  run.pending = [];
  run.abort();
}

// takeRun hands the rest of job jobId's run to its page, or returns null
// when there is none. attach(onMessage) passes onMessage every message
// after the start, in order, those that came meanwhile first; ended
// settles when the call ends (rejecting if it broke), and abort ends it.
export function takeRun(jobId) {
  const run = runs.get(jobId);
  if (!run) return null;
  runs.delete(jobId);
  return {
    started: run.started,
    ended: run.ended,
    abort: run.abort,
    attach(onMessage) {
      for (const msg of run.pending) onMessage(msg);
      run.pending = [];
      run.onMessage = onMessage;
    },
  };
}
