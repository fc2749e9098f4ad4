// Small DOM and formatting helpers. Everything that comes from the API is
// put into the page as text (textContent, text nodes), never as markup.

// el builds an element: attrs are set as attributes (class, href, …) or,
// for on* keys, as event listeners; children are nodes or strings (text).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const JOB_STATES = ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT", "LOST"];
export { JOB_STATES };

// shortState turns JOB_STATE_RUNNING into RUNNING, WORKER_STATE_READY into READY.
export function shortState(s) {
  return (s || "UNSPECIFIED").replace(/^(JOB|WORKER)_STATE_/, "");
}

export function isTerminal(state) {
  return ["SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT", "LOST"].includes(shortState(state));
}

export function isQueued(state) {
  return shortState(state) === "QUEUED";
}

// queuePlace is a queued job's place, "#3 in queue", or "" for any other
// job (the API reports 0 outside the queue).
export function queuePlace(status) {
  const n = Number(status && status.queuePosition) || 0;
  return isQueued(status && status.state) && n > 0 ? `#${n} in queue` : "";
}

export function badge(state) {
  const s = shortState(state);
  return el("span", { class: "badge badge-" + s.toLowerCase().replace(/_/g, "-") }, s);
}

export function parseTime(ts) {
  if (!ts) return null;
  const d = new Date(ts);
  return isNaN(d.getTime()) ? null : d;
}

// ago says how long ago a time was, for lists read at a glance.
export function ago(ts, now = Date.now()) {
  const d = parseTime(ts);
  if (!d) return "—";
  const s = Math.max(0, Math.round((now - d.getTime()) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return d.toLocaleDateString();
}

export function timeTitle(ts) {
  const d = parseTime(ts);
  return d ? d.toLocaleString() : "";
}

export function duration(startTs, endTs, now = Date.now()) {
  const a = parseTime(startTs);
  if (!a) return "—";
  const b = parseTime(endTs);
  return span((b ? b.getTime() : now) - a.getTime());
}

// span says how long ms milliseconds are: "350 ms", "4.2 s", "3 min 5 s".
export function span(ms) {
  ms = Math.max(0, Math.round(ms));
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

export function bytes(n) {
  n = Number(n || 0);
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + " MiB";
  return (n / (1 << 30)).toFixed(1) + " GiB";
}

// commandLine shows a spec the way a shell user reads it; arguments with
// spaces or quotes are quoted. Display only: nothing runs it.
export function commandLine(spec) {
  if (!spec) return "";
  const parts = [spec.command, spec.path, ...(spec.args || [])].filter((p) => p !== undefined && p !== "");
  return parts.map((p) => (/^[\w@%+=:,./-]+$/.test(p) ? p : "'" + p.replace(/'/g, "'\\''") + "'")).join(" ");
}

export function shortId(id) {
  return id ? id.slice(-12) : "";
}
