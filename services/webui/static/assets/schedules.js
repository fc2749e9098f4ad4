// The schedules: each with its cron, last and next fire and its fire
// counts, polled every five seconds while the page is shown. A user sees
// their own; an admin everyone's.

import { call } from "./api.js";
import { el, ago, timeTitle } from "./dom.js";

const POLL_MS = 5000;

export function renderSchedules(root, _query, ui) {
  const body = el("tbody");
  const count = el("span", { class: "count" });
  const empty = el("p", { class: "empty", hidden: true }, "No schedules. Define one with baton schedule add.");
  root.append(el("section", { class: "panel", id: "schedules" },
    el("div", { class: "panel-head" }, el("h2", {}, "Schedules "), count),
    el("table", { class: "table schedules-table" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Schedule"), el("th", {}, "Owner"), el("th", {}, "Cron"), el("th", {}, "State"),
        el("th", {}, "Last fire"), el("th", {}, "Next fire"),
        el("th", { class: "num" }, "Fires"), el("th", { class: "num" }, "Misses"), el("th", { class: "num" }, "Skips"))),
      body),
    empty));

  const aborter = new AbortController();
  let timer = null;

  async function load() {
    const all = [];
    let token = "";
    for (let i = 0; i < 100; i++) {
      const res = await call("ListSchedules", { pageSize: 1000, pageToken: token }, { signal: aborter.signal });
      all.push(...(res.schedules || []));
      if (!res.nextPageToken || res.nextPageToken === token) break;
      token = res.nextPageToken;
    }
    return all;
  }

  async function refresh() {
    try {
      const list = await load();
      ui.clearError();
      count.textContent = String(list.length);
      empty.hidden = list.length > 0;
      body.replaceChildren(...list.map((s) => el("tr", { "data-schedule": s.name, "data-owner": s.owner || "" },
        el("td", { class: "strong" }, s.name),
        el("td", {}, s.owner || ""),
        el("td", {}, el("code", {}, s.cron), " ", el("span", { class: "zone" }, s.timeZone || "UTC")),
        el("td", { class: "schedule-state" }, s.paused ? "paused" : "active"),
        el("td", { class: "schedule-last", title: timeTitle(s.lastFireTime) }, s.lastFireTime ? ago(s.lastFireTime) : "never"),
        el("td", { class: "schedule-next", title: timeTitle(s.nextFireTime) }, s.nextFireTime ? timeTitle(s.nextFireTime) : "—"),
        el("td", { class: "num schedule-fires" }, String(s.fires || 0)),
        el("td", { class: "num schedule-misses" }, String(s.misses || 0)),
        el("td", { class: "num schedule-skips" }, String(s.skips || 0)))));
    } catch (err) {
      ui.error(err, "listing schedules");
    }
    if (!aborter.signal.aborted) timer = setTimeout(refresh, POLL_MS);
  }
  refresh();

  return () => {
    aborter.abort();
    clearTimeout(timer);
  };
}
