// hotbatch dashboard: polls the /v1 API with the operator's key and draws what it answers.
// No library and no inline code (the page's CSP allows only this origin's files); ES modules,
// no build step. Routes live in the fragment: #/ (with ?status=… to filter) and #/batches/{id}.

import { useApiKey, ApiError } from "./api.js";
import {
  cancelBatch, downloadFile, openBatch, refreshBatch, retryDeadLetters, selectAllDeadLetters,
  updateRetryLabel,
} from "./batch.js";
import { $, clock } from "./dom.js";
import { FILTERS, refreshBatches, refreshHealth, refreshHistory, renderBatches } from "./overview.js";

const KEY_STORE = "hotbatch.key"; // sessionStorage: this tab only
const THEME_STORE = "hotbatch.theme"; // localStorage: the one thing kept across visits
const VIEW_EVERY_MS = 2000;
const HEALTH_EVERY_MS = 15000;
const HISTORY_EVERY_MS = 60000;

const state = { key: null, timers: [], generation: 0, route: { view: null } };

// --- the key: typed in, or given once in the fragment (#key=…), kept for this tab only ------

function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORE, key.trim());
    // Out of the address bar and the history entry, so it is not copied or bookmarked.
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }
  return false;
}

function useKey(key) {
  state.key = key;
  useApiKey(key, forgetKey);
  $("key-form").hidden = Boolean(key);
  $("forget").hidden = !key;
  $("content").hidden = !key;
  stopPolling();
  if (key) {
    say("");
    startPolling();
  }
}

function forgetKey(why) {
  sessionStorage.removeItem(KEY_STORE);
  useKey(null);
  say(why || "Type an API key to see the batches.");
}

function say(text, kind) {
  const message = $("message");
  message.textContent = text;
  message.hidden = !text;
  message.className = "message " + (kind || "");
}

// --- routes ----------------------------------------------------------------------------------

function parseRoute() {
  const [path, query] = location.hash.slice(1).split("?", 2);
  const batch = /^\/batches\/([^/]+)$/.exec(path);
  if (batch) return { view: "batch", id: decodeURIComponent(batch[1]) };
  const filter = new URLSearchParams(query || "").get("status");
  return { view: "list", filter: FILTERS.some((f) => f.name === filter) ? filter : "all" };
}

function showRoute() {
  const before = state.route;
  state.route = parseRoute();
  const route = state.route;
  $("view-list").hidden = route.view !== "list";
  $("view-batch").hidden = route.view !== "batch";
  if (route.view === "batch") {
    if (before.view !== "batch" || before.id !== route.id) openBatch(route.id);
    document.title = "hotbatch · " + route.id;
  } else {
    renderBatches(route.filter);
    document.title = "hotbatch · dashboard";
  }
  if (state.key) refreshView().catch(report);
}

function refreshView() {
  return state.route.view === "batch" ? refreshBatch() : refreshBatches();
}

// --- polling -------------------------------------------------------------------------------

function report(error) {
  if (!state.key) return;
  const why = error instanceof ApiError
    ? "The API answered " + error.status + ": " + error.message
    : "Cannot reach the API (" + error.message + ")";
  say(why + "; retrying.", "lost");
}

function startPolling() {
  // A loop belongs to the key it started with: a new key starts new loops, old ones end.
  const generation = ++state.generation;
  const current = () => state.key && generation === state.generation;
  const every = (ms, task) => {
    const run = async () => {
      if (!current()) return;
      if (!document.hidden) {
        try {
          await task();
          $("updated").textContent = "updated " + clock(Date.now() / 1000, true);
          if ($("message").classList.contains("lost")) say("");
        } catch (error) {
          if (current()) report(error);
        }
      }
      if (current()) state.timers.push(setTimeout(run, ms));
    };
    run();
  };
  every(VIEW_EVERY_MS, refreshView);
  every(HEALTH_EVERY_MS, refreshHealth);
  every(HISTORY_EVERY_MS, refreshHistory);
}

function stopPolling() {
  state.generation++;
  state.timers.forEach(clearTimeout);
  state.timers = [];
}

// --- the theme: the system's (prefers-color-scheme) until the toggle picks one --------------

const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

function isDark() {
  const chosen = document.documentElement.dataset.theme;
  return chosen ? chosen === "dark" : systemDark.matches;
}

function applyTheme(theme) {
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  $("theme").textContent = isDark() ? "Light theme" : "Dark theme";
  $("theme").setAttribute("aria-pressed", String(isDark()));
}

function toggleTheme() {
  const theme = isDark() ? "light" : "dark";
  localStorage.setItem(THEME_STORE, theme);
  applyTheme(theme);
}

// --- start ---------------------------------------------------------------------------------

function start() {
  applyTheme(localStorage.getItem(THEME_STORE));
  systemDark.addEventListener("change", () => applyTheme(document.documentElement.dataset.theme));
  $("theme").addEventListener("click", toggleTheme);
  takeKeyFromFragment();
  window.addEventListener("hashchange", () => {
    if (takeKeyFromFragment()) useKey(sessionStorage.getItem(KEY_STORE));
    showRoute();
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    $("key-input").value = "";
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    useKey(key);
  });
  $("forget").addEventListener("click", () => forgetKey("Key forgotten."));
  $("cancel").addEventListener("click", () => cancelBatch());
  for (const which of ["output", "errors", "input"]) {
    $("download-" + which).addEventListener("click", () => downloadFile(which === "errors" ? "error" : which));
  }
  $("redrive").addEventListener("click", retryDeadLetters);
  $("dead-all").addEventListener("change", (event) => selectAllDeadLetters(event.target.checked));
  $("dead-letters").addEventListener("change", updateRetryLabel);
  $("hours").addEventListener("change", () => refreshHistory().catch(report));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.key) refreshView().catch(report);
  });
  showRoute();
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) useKey(key);
  else forgetKey();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
