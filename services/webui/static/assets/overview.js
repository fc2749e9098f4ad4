// The overview: the roster of workers and the jobs, newest first, with
// filters and pages. Both are polled every two seconds while visible; a
// page of jobs is fetched by its keyset token, so a page stays put while
// new jobs arrive on the first one.

import { call } from "./api.js";
import { el, badge, ago, timeTitle, duration, commandLine, shortId, shortState, isTerminal, isQueued, queuePlace, JOB_STATES } from "./dom.js";

const POLL_MS = 2000;
const HIDDEN_POLL_MS = 15000;
const PAGE_SIZE = 50;

// Filters and paging survive a visit to a job page and back.
const state = {
  jobState: "",
  worker: "",
  tokens: [""], // tokens[i] fetches page i; the last one is the current page
  workerNames: [],
};

export function renderOverview(root, query, ui) {
  if (query.has("state")) state.jobState = query.get("state");
  if (query.has("worker")) state.worker = query.get("worker");

  const workersBody = el("tbody");
  const workersCount = el("span", { class: "count" });
  // A replicated scheduler names the replica that leads and its epoch.
  const leaderNote = el("span", { class: "count", id: "scheduler-leader" });
  const workersSection = el("section", { class: "panel", id: "workers" },
    el("div", { class: "panel-head" }, el("h2", {}, "Workers "), workersCount, leaderNote),
    el("table", { class: "table workers-table" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Worker"), el("th", {}, "State"), el("th", {}, "Labels"),
        el("th", { class: "num" }, "Running"), el("th", {}, "Last heartbeat"), el("th", {}, "Address"), el("th", {}, ""))),
      workersBody));

  const stateSelect = el("select", { id: "filter-state", "aria-label": "Job state" },
    el("option", { value: "" }, "Any state"),
    JOB_STATES.map((s) => el("option", { value: s }, s.replace("_", " ").toLowerCase())));
  stateSelect.value = state.jobState;
  const workerSelect = el("select", { id: "filter-worker", "aria-label": "Worker" }, el("option", { value: "" }, "Any worker"));
  fillWorkerOptions(workerSelect);

  const jobsBody = el("tbody");
  const prev = el("button", { type: "button", class: "button", id: "jobs-prev" }, "← Newer");
  const next = el("button", { type: "button", class: "button", id: "jobs-next" }, "Older →");
  const pageLabel = el("span", { id: "jobs-page", class: "page-label" });
  const updated = el("span", { class: "updated", id: "jobs-updated" });
  const empty = el("p", { class: "empty", hidden: true }, "No jobs match.");

  const jobsSection = el("section", { class: "panel", id: "jobs" },
    el("div", { class: "panel-head" },
      el("h2", {}, "Jobs"),
      el("div", { class: "filters" },
        el("label", {}, "State ", stateSelect),
        el("label", {}, "Worker ", workerSelect))),
    el("table", { class: "table jobs-table" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Job"), el("th", {}, "State"), el("th", {}, "Worker"), el("th", {}, "Command"),
        el("th", { class: "num" }, "Exit"), el("th", {}, "Created"), el("th", {}, "Duration"))),
      jobsBody),
    empty,
    el("div", { class: "pager" }, prev, pageLabel, next, updated));

  root.append(workersSection, jobsSection);

  let timer = null;
  let generation = 0;
  let nextToken = "";
  const aborter = new AbortController();

  function resetPaging() {
    state.tokens = [""];
    nextToken = "";
  }
  stateSelect.addEventListener("change", () => {
    state.jobState = stateSelect.value;
    resetPaging();
    refresh();
  });
  workerSelect.addEventListener("change", () => {
    state.worker = workerSelect.value;
    resetPaging();
    refresh();
  });
  prev.addEventListener("click", () => {
    if (state.tokens.length > 1) state.tokens.pop();
    refresh();
  });
  next.addEventListener("click", () => {
    if (nextToken) state.tokens.push(nextToken);
    refresh();
  });

  function fillWorkerOptions(select) {
    const names = new Set(state.workerNames);
    if (state.worker) names.add(state.worker);
    const keep = select.value || state.worker;
    select.replaceChildren(el("option", { value: "" }, "Any worker"), ...[...names].sort().map((n) => el("option", { value: n }, n)));
    select.value = keep;
  }

  async function refresh() {
    clearTimeout(timer);
    const gen = ++generation;
    const req = { pageSize: PAGE_SIZE, pageToken: state.tokens[state.tokens.length - 1] };
    if (state.jobState) req.states = ["JOB_STATE_" + state.jobState];
    if (state.worker) req.workerId = state.worker;
    try {
      const [w, j] = await Promise.all([
        call("ListWorkers", {}, { signal: aborter.signal }),
        call("ListJobs", req, { signal: aborter.signal }),
      ]);
      if (gen !== generation) return;
      renderWorkers(w.workers || []);
      leaderNote.textContent = w.leader ? ` · scheduler leader ${w.leader} (epoch ${w.epoch})` : "";
      renderJobs(j.jobs || [], j.nextPageToken || "");
      ui.clearError();
    } catch (err) {
      if (gen !== generation || aborter.signal.aborted) return;
      // A token issued for another filter is refused; start over.
      if (err.code === "invalid_argument" && state.tokens.length > 1) {
        resetPaging();
      }
      ui.error(err, "Listing workers and jobs");
    }
    // A hidden tab polls slowly; showing it again refreshes at once.
    if (gen === generation && !aborter.signal.aborted) timer = setTimeout(refresh, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  function renderWorkers(workers) {
    const now = Date.now();
    workersCount.textContent = countLabel(workers);
    const names = workers.map((w) => w.name || w.workerId);
    if (names.join("\n") !== state.workerNames.join("\n")) {
      state.workerNames = names;
      fillWorkerOptions(workerSelect);
    }
    workersBody.replaceChildren(...workers.map((w) => {
      const name = w.name || w.workerId;
      const ready = shortState(w.state) === "READY";
      return el("tr", { dataset: { worker: name, state: shortState(w.state) } },
        el("td", { "data-label": "Worker", class: "strong" }, name),
        el("td", { "data-label": "State" }, badge(w.state)),
        el("td", { "data-label": "Labels" }, labels(w.labels)),
        el("td", { "data-label": "Running", class: "num" }, `${w.runningJobs || 0} / ${w.capacity ? w.capacity : "∞"}`),
        el("td", { "data-label": "Last heartbeat", title: timeTitle(w.lastHeartbeat) }, ago(w.lastHeartbeat, now)),
        el("td", { "data-label": "Address", class: "mono" }, w.address || ""),
        el("td", { class: "actions" }, ready ? el("a", { href: "#/new?worker=" + encodeURIComponent(name), class: "link" }, "Run here") : ""));
    }));
    if (workers.length === 0) {
      workersBody.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No worker has registered yet.")));
    }
  }

  function renderJobs(jobs, token) {
    const now = Date.now();
    nextToken = token;
    const page = state.tokens.length;
    // A page emptied under our feet (its jobs pruned): step back.
    if (jobs.length === 0 && page > 1) {
      state.tokens.pop();
      refresh();
      return;
    }
    jobsBody.replaceChildren(...jobs.map((j) => {
      const href = "#/jobs/" + encodeURIComponent(j.jobId);
      const exit = j.exitCode !== undefined ? String(j.exitCode) : j.signal || "";
      return el("tr", { dataset: { job: j.jobId, state: shortState(j.state), worker: j.workerId || "", created: j.createdAt || "" } },
        el("td", { "data-label": "Job", class: "mono" }, el("a", { href, class: "link", title: j.jobId }, shortId(j.jobId))),
        el("td", { "data-label": "State" }, badge(j.state), queueNote(j)),
        el("td", { "data-label": "Worker" }, j.workerId || ""),
        el("td", { "data-label": "Command", class: "mono command" }, commandLine(j.spec)),
        el("td", { "data-label": "Exit", class: "num" }, exit),
        el("td", { "data-label": "Created", title: timeTitle(j.createdAt) }, ago(j.createdAt, now)),
        el("td", { "data-label": "Duration" }, j.startedAt ? duration(j.startedAt, isTerminal(j.state) ? j.endedAt : null, now) : "—"));
    }));
    empty.hidden = jobs.length > 0;
    prev.disabled = page <= 1;
    next.disabled = !token;
    pageLabel.textContent = `Page ${page}`;
    updated.textContent = "updated " + new Date(now).toLocaleTimeString();
  }

  function onVisibility() {
    if (!document.hidden) refresh();
  }
  document.addEventListener("visibilitychange", onVisibility);

  refresh();
  return () => {
    generation++;
    clearTimeout(timer);
    aborter.abort();
    document.removeEventListener("visibilitychange", onVisibility);
  };
}

// queueNote says where a queued job stands and what it waits for; other
// jobs' reasons stay on their own page.
function queueNote(j) {
  if (!isQueued(j.state)) return "";
  const place = queuePlace(j);
  return el("div", { class: "queue-note" },
    place ? el("span", { class: "queue-place" }, place) : "",
    j.reason ? el("span", { class: "queue-reason" }, j.reason) : "");
}

function countLabel(workers) {
  const ready = workers.filter((w) => shortState(w.state) === "READY").length;
  return `${ready} ready of ${workers.length}`;
}

function labels(map) {
  const entries = Object.entries(map || {}).sort(([a], [b]) => a.localeCompare(b));
  if (entries.length === 0) return "—";
  return el("span", { class: "chips" }, entries.map(([k, v]) => el("span", { class: "chip" }, `${k}=${v}`)));
}
