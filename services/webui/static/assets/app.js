// The page's entry point: the hash router, the error banner and the token
// control. Views live in their own modules and return a cleanup function
// that stops their polling and streams when the route changes.

import { getToken, setToken } from "./api.js";
import { renderOverview } from "./overview.js";
import { renderJob } from "./job.js";
import { renderNewJob } from "./newjob.js";
import { renderSchedules } from "./schedules.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const tokenPanel = document.getElementById("token-panel");
const tokenToggle = document.getElementById("token-toggle");
const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token-input");

let cleanup = null;

// ui is what views use to report problems and move between routes.
const ui = {
  // error shows a failed call. Unauthenticated and PermissionDenied
  // answers open the token control, since a token is what is missing.
  error(err, what) {
    if (err && err.name === "AbortError") return;
    const prefix = what ? what + ": " : "";
    if (err && err.needsToken) {
      const have = getToken() ? "The token in use was refused" : "This scheduler needs a token";
      showBanner(`${prefix}${have} (${err.code}: ${err.message}). Enter a bearer token below.`, "auth");
      openToken(true);
      return;
    }
    const code = err && err.code ? err.code + ": " : "";
    showBanner(prefix + code + (err && err.message ? err.message : String(err)), "error");
  },
  clearError() {
    if (!banner.hidden) {
      banner.hidden = true;
      banner.textContent = "";
    }
  },
  go(hash) {
    location.hash = hash;
  },
};

function showBanner(text, kind) {
  banner.textContent = text;
  banner.className = "banner banner-" + kind;
  banner.hidden = false;
}

function openToken(open) {
  tokenPanel.hidden = !open;
  tokenToggle.setAttribute("aria-expanded", String(open));
  if (open) tokenInput.focus();
}

function updateTokenButton() {
  tokenToggle.textContent = getToken() ? "Token ✓" : "Token";
  tokenToggle.title = getToken() ? "A bearer token is set for this tab" : "No bearer token set";
}

tokenToggle.addEventListener("click", () => openToken(tokenPanel.hidden));
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  tokenInput.value = "";
  openToken(false);
  updateTokenButton();
  ui.clearError();
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  setToken("");
  tokenInput.value = "";
  updateTokenButton();
  route();
});

// parseHash splits "#/jobs/ID?worker=w" into its path parts and query.
function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?", 2);
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query) };
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  view.replaceChildren();
  const { parts, query } = parseHash();
  let nav = "overview";
  if (parts[0] === "jobs" && parts[1]) {
    cleanup = renderJob(view, parts[1], ui);
    nav = "";
  } else if (parts[0] === "schedules") {
    cleanup = renderSchedules(view, query, ui);
    nav = "schedules";
  } else if (parts[0] === "new") {
    cleanup = renderNewJob(view, query, ui);
    nav = "new";
  } else {
    cleanup = renderOverview(view, query, ui);
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

window.addEventListener("hashchange", route);
updateTokenButton();
route();
