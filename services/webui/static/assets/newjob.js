// The form that starts a job: where it runs (any ready worker, a named
// worker, a label selector, or every matching worker), and what it runs
// (command, script path, arguments one per line, passed verbatim).

import { call } from "./api.js";
import { startRun } from "./runs.js";
import { el, shortState } from "./dom.js";

export function renderNewJob(root, query, ui) {
  const aborter = new AbortController();
  const presetWorker = query.get("worker") || "";

  const placement = el("select", { id: "new-placement", name: "placement" },
    el("option", { value: "any" }, "Any ready worker (least loaded)"),
    el("option", { value: "worker" }, "A worker by name"),
    el("option", { value: "selector" }, "A worker matching labels"),
    el("option", { value: "all" }, "Every matching worker (fan-out)"));
  const worker = el("select", { id: "new-worker", name: "worker" });
  const selector = el("input", { id: "new-selector", name: "selector", type: "text", placeholder: "slot=1, zone=a", spellcheck: "false", autocomplete: "off" });
  const command = el("input", { id: "new-command", name: "command", type: "text", required: true, value: "bash", list: "new-commands", spellcheck: "false", autocomplete: "off" });
  const path = el("input", { id: "new-path", name: "path", type: "text", placeholder: "count.sh", spellcheck: "false", autocomplete: "off" });
  const args = el("textarea", { id: "new-args", name: "args", rows: "3", spellcheck: "false", placeholder: "one argument per line" });
  const timeout = el("input", { id: "new-timeout", name: "timeout", type: "number", min: "0", step: "1", placeholder: "none", inputmode: "numeric" });
  const submit = el("button", { type: "submit", class: "button primary", id: "new-submit" }, "Start");
  const formError = el("p", { class: "form-error", id: "new-error", role: "alert", hidden: true });

  const workerField = el("div", { class: "field" }, el("label", { for: "new-worker" }, "Worker"), worker);
  const selectorField = el("div", { class: "field" }, el("label", { for: "new-selector" }, "Labels"), selector,
    el("p", { class: "hint" }, "key=value pairs, comma-separated; the worker must have them all."));

  const form = el("form", { class: "panel form", id: "new-job-form", autocomplete: "off" },
    el("h2", {}, "Start a job"),
    el("div", { class: "field" }, el("label", { for: "new-placement" }, "Run on"), placement),
    workerField,
    selectorField,
    el("div", { class: "field" }, el("label", { for: "new-command" }, "Command"), command,
      el("datalist", { id: "new-commands" }, ["bash", "sh", "python3", "perl", "ruby", "node"].map((c) => el("option", { value: c }))),
      el("p", { class: "hint" }, "An allow-listed program, or an executable in the workers' scripts directory.")),
    el("div", { class: "field" }, el("label", { for: "new-path" }, "Script path"), path,
      el("p", { class: "hint" }, "Inside the scripts directory; leave empty to run the command alone.")),
    el("div", { class: "field" }, el("label", { for: "new-args" }, "Arguments"), args,
      el("p", { class: "hint" }, "One per line, passed as they are: no shell is involved.")),
    el("div", { class: "field" }, el("label", { for: "new-timeout" }, "Timeout (seconds)"), timeout),
    formError,
    el("div", { class: "row" }, submit, el("a", { href: "#/", class: "button quiet" }, "Cancel")));
  root.append(form);

  function syncPlacement() {
    const p = placement.value;
    workerField.hidden = p !== "worker";
    selectorField.hidden = !(p === "selector" || p === "all");
  }
  placement.addEventListener("change", syncPlacement);
  if (presetWorker) placement.value = "worker";
  syncPlacement();

  worker.append(el("option", { value: presetWorker }, presetWorker || "loading…"));
  call("ListWorkers", {}, { signal: aborter.signal })
    .then((res) => {
      const names = (res.workers || []).map((w) => ({ name: w.name || w.workerId, state: shortState(w.state) }));
      worker.replaceChildren(...names.map((w) =>
        el("option", { value: w.name, disabled: w.state !== "READY" && w.name !== presetWorker }, w.state === "READY" ? w.name : `${w.name} (${w.state})`)));
      if (presetWorker) worker.value = presetWorker;
    })
    .catch((err) => ui.error(err, "Listing workers"));

  function showError(text) {
    formError.textContent = text;
    formError.hidden = !text;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    const req = { command: command.value.trim(), path: path.value.trim() };
    const argv = args.value.split("\n").map((a) => a.replace(/\r$/, ""));
    while (argv.length && argv[argv.length - 1] === "") argv.pop();
    if (argv.length) req.args = argv;
    const p = placement.value;
    if (p === "worker") {
      if (!worker.value) return showError("Choose a worker.");
      req.workerId = worker.value;
    }
    if (p === "selector" || p === "all") {
      const sel = parseSelector(selector.value);
      if (sel === null) return showError("Labels must be key=value pairs separated by commas.");
      if (Object.keys(sel).length) req.selector = sel;
      else if (p === "selector") return showError("Give at least one key=value label.");
    }
    if (p === "all") req.all = true;
    if (timeout.value !== "") {
      const secs = Number(timeout.value);
      if (!Number.isFinite(secs) || secs < 0) return showError("The timeout is a number of seconds.");
      if (secs > 0) req.timeout = secs + "s";
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      // One job is started and followed in one call (RunJob); a fan-out
      // is started, and each of its jobs followed on its own page.
      const jobId = req.all
        ? (await call("StartJob", req, { signal: aborter.signal })).jobId
        : (await startRun(req, { signal: aborter.signal })).jobId;
      ui.clearError();
      ui.go("#/jobs/" + encodeURIComponent(jobId));
    } catch (err) {
      if (aborter.signal.aborted) return;
      if (err.needsToken) ui.error(err, "Starting the job");
      else showError(`The scheduler refused the job (${err.code}): ${err.message}`);
    } finally {
      submit.disabled = false;
      submit.textContent = "Start";
    }
  });

  command.focus();
  return () => aborter.abort();
}

// parseSelector reads "k=v, k2=v2"; null when malformed.
function parseSelector(text) {
  const out = {};
  for (const part of text.split(",")) {
    const p = part.trim();
    if (!p) continue;
    const i = p.indexOf("=");
    if (i <= 0) return null;
    out[p.slice(0, i).trim()] = p.slice(i + 1).trim();
  }
  return out;
}
