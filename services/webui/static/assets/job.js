// A job's page: its status, a stop button, and its output followed live
// through the RunJob call that started it from the form, or else
// StreamJobOutput (a real server stream, not polling). stdout and
// stderr are shown interleaved in the order they were captured, stderr in
// its own colour. A broken stream resumes from the last offset received.
// A queued job has no worker and no output yet: its place in the queue is
// polled until it leaves the queue, and its output followed from then.

import { call, stream, base64Bytes } from "./api.js";
import { takeRun } from "./runs.js";
import { el, badge, timeTitle, duration, span, commandLine, shortState, isTerminal, isQueued, queuePlace, bytes } from "./dom.js";

// Output kept on the page; older output is trimmed so that a chatty job
// cannot exhaust the tab's memory.
const MAX_SHOWN_CHARS = 2 << 20;
const QUEUE_POLL_MS = 2000;
const HIDDEN_QUEUE_POLL_MS = 15000;

export function renderJob(root, jobId, ui) {
  const aborter = new AbortController();
  let status = null;
  let offset = 0;
  let shownChars = 0;
  let stopArmed = null;

  const title = el("h2", {}, "Job ", el("span", { class: "mono" }, jobId));
  const stateSlot = el("span", { id: "job-state-badge" });
  const durationEl = el("span", { id: "job-duration" });
  const facts = el("dl", { class: "facts", id: "job-facts" });
  const stopButton = el("button", { type: "button", class: "button danger", id: "job-stop", disabled: true }, "Stop");
  const streamNote = el("span", { class: "stream-note", id: "job-stream-note" }, "connecting…");
  const output = el("pre", { class: "output", id: "job-output", tabindex: "0", "aria-label": "Job output" });
  const trimmed = el("p", { class: "hint", hidden: true }, "Earlier output was trimmed from this view.");

  root.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/", class: "link" }, "← Jobs")),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" }, title, stateSlot, el("div", { class: "spacer" }), stopButton),
      facts),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" },
        el("h2", {}, "Output"),
        el("span", { class: "legend" },
          el("span", { class: "legend-stdout" }, "stdout"), " ",
          el("span", { class: "legend-stderr" }, "stderr")),
        el("div", { class: "spacer" }),
        streamNote),
      trimmed,
      output));

  function renderStatus(s) {
    status = s;
    stateSlot.replaceChildren(badge(s.state));
    stateSlot.dataset.state = shortState(s.state);
    const exit = s.exitCode !== undefined ? String(s.exitCode) : "—";
    durationEl.textContent = s.startedAt ? duration(s.startedAt, isTerminal(s.state) ? s.endedAt : null) : "";
    const place = queuePlace(s);
    const rows = [
      ["State", el("span", { id: "job-state" }, shortState(s.state))],
      place && ["Queue", el("span", { id: "job-queue-place" }, place)],
      ["Exit code", el("span", { id: "job-exit" }, exit)],
      s.signal && ["Signal", s.signal],
      s.reason && ["Reason", el("span", { id: "job-reason" }, s.reason)],
      ["Worker", s.workerId || "—"],
      ["Command", el("code", {}, commandLine(s.spec))],
      ["Priority", el("span", { id: "job-priority" }, String((s.spec && s.spec.priority) || 0))],
      s.spec && s.spec.queueTimeout && s.spec.queueTimeout !== "0s" && ["Queue timeout", queueTimeout(s.spec.queueTimeout)],
      s.spec && s.spec.selector && Object.keys(s.spec.selector).length > 0 && ["Selector", el("code", {}, selectorText(s.spec.selector))],
      ["Created", timeTitle(s.createdAt) || "—"],
      s.startedAt && ["Started", timeTitle(s.startedAt)],
      s.endedAt && ["Ended", timeTitle(s.endedAt)],
      s.startedAt && ["Duration", durationEl],
      s.pid && !isTerminal(s.state) && ["PID", String(s.pid)],
      s.owner && ["Owner", s.owner],
      s.stoppedBy && ["Stopped by", s.stoppedBy],
      (s.stdoutBytes || s.stderrBytes) && ["Output", `${bytes(s.stdoutBytes)} stdout, ${bytes(s.stderrBytes)} stderr`],
      s.usage && s.usage.source && ["Cost", el("span", { id: "job-cost" }, costText(s.usage))],
      s.spec && s.spec.retry && ["Attempt", el("span", { id: "job-attempt" }, `${s.attempt || 1} of ${s.spec.retry.attempts}`)],
      ...(s.attempts || []).map((a) => [`Attempt ${a.number}`, el("span", { class: "job-earlier-attempt" }, attemptText(a))]),
      s.spec && s.spec.after && s.spec.after.length > 0 && ["After", el("code", { id: "job-after" }, afterText(s.spec.after))],
      s.spec && s.spec.arrayIndex !== undefined && ["Array index", String(s.spec.arrayIndex)],
      s.groupId && ["Group", el("span", { class: "mono" }, s.groupId)],
    ].filter(Boolean);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    stopButton.disabled = isTerminal(s.state);
    if (isTerminal(s.state)) disarmStop();
  }

  // Each stream has its own decoder, so a UTF-8 character split across
  // chunks is decoded whole.
  const decoders = { OUTPUT_STREAM_STDOUT: new TextDecoder(), OUTPUT_STREAM_STDERR: new TextDecoder() };

  function appendChunk(chunk) {
    const data = base64Bytes(chunk.data);
    const start = Number(chunk.offset || 0);
    // A resumed stream can repeat bytes we already have; skip them.
    const skip = Math.max(0, offset - start);
    if (skip >= data.length && data.length > 0) return;
    offset = start + data.length;
    const which = chunk.stream === "OUTPUT_STREAM_STDERR" ? "OUTPUT_STREAM_STDERR" : "OUTPUT_STREAM_STDOUT";
    const text = decoders[which].decode(data.subarray(skip), { stream: true });
    if (!text) return;
    const cls = which === "OUTPUT_STREAM_STDERR" ? "out-stderr" : "out-stdout";
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 24;
    const last = output.lastElementChild;
    if (last && last.className === cls) last.firstChild.appendData(text);
    else output.append(el("span", { class: cls }, text));
    shownChars += text.length;
    while (shownChars > MAX_SHOWN_CHARS && output.firstElementChild && output.firstElementChild !== output.lastElementChild) {
      shownChars -= output.firstElementChild.textContent.length;
      output.firstElementChild.remove();
      trimmed.hidden = false;
    }
    if (atBottom) output.scrollTop = output.scrollHeight;
  }

  // waitInQueue polls a queued job until it leaves the queue. It resolves
  // false when the page closed meanwhile.
  async function waitInQueue() {
    while (status && isQueued(status.state)) {
      streamNote.textContent = "waiting in the queue";
      streamNote.className = "stream-note";
      await sleep(document.hidden ? HIDDEN_QUEUE_POLL_MS : QUEUE_POLL_MS, aborter.signal);
      if (aborter.signal.aborted) return false;
      try {
        const res = await call("QueryJob", { jobId }, { signal: aborter.signal });
        // A stop meanwhile may have ended the job already; that is newer.
        if (res.status && isQueued(status.state)) renderStatus(res.status);
        ui.clearError();
      } catch (err) {
        if (aborter.signal.aborted) return false;
        ui.error(err, "Loading job " + jobId);
      }
    }
    return true;
  }

  // watch follows the job's output once it is out of the queue. A job that
  // ended in the queue never ran: it has no output to follow.
  async function watch() {
    if (!(await waitInQueue())) return;
    if (status && isTerminal(status.state) && !status.workerId) {
      streamNote.textContent = "ended";
      streamNote.className = "stream-note";
      output.replaceChildren(el("span", { class: "out-none" }, "(never ran)"));
      return;
    }
    follow();
  }

  let gotStatus = false;
  function onMessage(msg) {
    if (msg.chunk) appendChunk(msg.chunk);
    else if (msg.status) {
      gotStatus = true;
      renderStatus(msg.status);
    }
  }

  async function follow(run) {
    let delay = 500;
    let failures = 0;
    for (;;) {
      streamNote.textContent = "following live";
      streamNote.className = "stream-note live";
      try {
        if (run) {
          aborter.signal.addEventListener("abort", run.abort);
          const ended = run.ended;
          run = null;
          await ended;
        } else {
          gotStatus = false;
          await stream("StreamJobOutput", { jobId, follow: true, offset: String(offset) }, (msg) => {
            delay = 500;
            onMessage(msg);
          }, { signal: aborter.signal });
        }
        if (gotStatus && status && isTerminal(status.state)) {
          streamNote.textContent = "ended";
          streamNote.className = "stream-note";
          if (output.childElementCount === 0) output.append(el("span", { class: "out-none" }, "(no output)"));
          return;
        }
      } catch (err) {
        if (aborter.signal.aborted) return;
        failures++;
        // A job that has ended on a worker that stays unreachable has no
        // output to wait for: say so rather than retry forever.
        const hopeless = failures >= 3 && status && isTerminal(status.state);
        if ((err.code !== "unavailable" && err.code !== "deadline_exceeded") || hopeless) {
          streamNote.textContent = "stopped following";
          streamNote.className = "stream-note";
          ui.error(err, "Following the output");
          return;
        }
      }
      // The scheduler restarted or the connection broke: resume from the
      // last offset after a short, growing pause.
      streamNote.textContent = "reconnecting…";
      streamNote.className = "stream-note warn";
      await sleep(delay, aborter.signal);
      if (aborter.signal.aborted) return;
      delay = Math.min(delay * 2, 10000);
    }
  }

  function disarmStop() {
    clearTimeout(stopArmed);
    stopArmed = null;
    stopButton.textContent = "Stop";
    stopButton.classList.remove("armed");
  }

  // Stopping takes two clicks: the first arms the button for a few seconds.
  stopButton.addEventListener("click", async () => {
    if (!stopArmed) {
      stopButton.textContent = "Click again to stop";
      stopButton.classList.add("armed");
      stopArmed = setTimeout(disarmStop, 4000);
      return;
    }
    disarmStop();
    stopButton.disabled = true;
    stopButton.textContent = "Stopping…";
    try {
      const res = await call("StopJob", { jobId }, { signal: aborter.signal });
      if (res.status) renderStatus(res.status);
      ui.clearError();
    } catch (err) {
      ui.error(err, "Stopping the job");
      if (status) stopButton.disabled = isTerminal(status.state);
    } finally {
      stopButton.textContent = "Stop";
    }
  });

  // A job started from the form comes with the rest of its RunJob call.
  const run = takeRun(jobId);
  if (run) {
    renderStatus(run.started);
    run.attach(onMessage);
    follow(run);
  } else call("QueryJob", { jobId }, { signal: aborter.signal })
    .then((res) => {
      // The stream's final status may have arrived first; it is newer.
      if (res.status && !(status && isTerminal(status.state))) renderStatus(res.status);
      ui.clearError();
      watch();
    })
    .catch((err) => {
      if (aborter.signal.aborted) return;
      streamNote.textContent = "";
      ui.error(err, "Loading job " + jobId);
    });

  // While the job runs, its duration counts up.
  const ticker = setInterval(() => {
    if (status && !isTerminal(status.state) && status.startedAt) durationEl.textContent = duration(status.startedAt, null);
  }, 1000);

  return () => {
    aborter.abort();
    clearTimeout(stopArmed);
    clearInterval(ticker);
  };
}

// costText says what a run cost, as its worker measured it: "CPU 1.0 s
// user + 52 ms system · peak 100.5 MiB · wall 2.5 s (cgroup)". A peak of
// 0 is one rusage could not tell apart from the worker's own memory.
function costText(u) {
  const ms = (d) => span(parseFloat(d || "0") * 1000);
  const peak = Number(u.peakMemoryBytes || 0) > 0 ? bytes(u.peakMemoryBytes) : "unknown";
  return `CPU ${ms(u.cpuUser)} user + ${ms(u.cpuSystem)} system · peak ${peak} · wall ${ms(u.wall)} (${u.source})`;
}

// attemptText is one earlier attempt of a retried job: "FAILED, exit 3 on
// w1 · CPU … (rusage)".
function attemptText(a) {
  let t = shortState(a.state);
  if (a.exitCode !== undefined) t += `, exit ${a.exitCode}`;
  if (a.workerId) t += ` on ${a.workerId}`;
  if (a.reason) t += ` (${a.reason})`;
  if (a.usage && a.usage.source) t += ` · ${costText(a.usage)}`;
  return t;
}

// afterText lists what a job waits for: "succeeded:ID, ended:group/ID".
function afterText(deps) {
  return deps.map((d) => {
    const cond = (d.condition || "DEPENDENCY_CONDITION_SUCCEEDED").replace("DEPENDENCY_CONDITION_", "").toLowerCase();
    return `${cond === "unspecified" ? "succeeded" : cond}:${d.groupId ? "group/" + d.groupId : d.jobId}`;
  }).join(", ");
}

// queueTimeout reads a protojson duration ("600s", "-1s").
function queueTimeout(d) {
  const secs = parseFloat(d);
  if (!Number.isFinite(secs)) return d;
  return secs < 0 ? "none (waits until placed or stopped)" : span(secs * 1000);
}

function selectorText(sel) {
  return Object.entries(sel).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${v}`).join(", ");
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}
