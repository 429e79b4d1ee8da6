// The overview (#/): the health of the last hour, the batches with a status filter, and the
// fleet's stored health samples charted.

import { api } from "./api.js";
import { drawChart } from "./charts.js";
import {
  $, DASH, TERMINAL, ago, clock, count, countsOf, duration, el, eta, isNum, money, percent, pill,
  progressBar, rate, requestsPerSecond,
} from "./dom.js";

// --- batches -------------------------------------------------------------------------------

export const FILTERS = [
  { name: "all", label: "All", statuses: null },
  { name: "active", label: "Active", statuses: ["validating", "in_progress", "finalizing"] },
  { name: "completed", label: "Completed", statuses: ["completed"] },
  { name: "failed", label: "Failed", statuses: ["failed"] },
  { name: "cancelled", label: "Cancelled", statuses: ["cancelling", "cancelled"] },
  { name: "expired", label: "Expired", statuses: ["expired"] },
];
const LISTED = 100; // the newest, in one call (the API's largest page)
let listed = null; // the last page read: a filter change redraws it at once
let shownFilter = "all"; // the filter when the page read answers, not when it was asked

const filterLink = (name) => (name === "all" ? "#/" : "#/?status=" + name);

export async function refreshBatches() {
  listed = await api("v1/batches?limit=" + LISTED);
  renderBatches(shownFilter);
}

export function renderBatches(filter) {
  shownFilter = filter;
  const wanted = FILTERS.find((f) => f.name === filter) || FILTERS[0];
  const all = listed ? listed.data : [];
  const matches = (f, batch) => !f.statuses || f.statuses.includes(batch.status);
  drawFilters(wanted, (f) => all.filter((batch) => matches(f, batch)).length);
  if (!listed) return;
  const shown = all.filter((batch) => matches(wanted, batch));
  renderRows(shown);
  $("batches").hidden = shown.length === 0;
  const empty = $("batches-empty");
  empty.hidden = shown.length > 0;
  empty.textContent = all.length
    ? "No " + wanted.label.toLowerCase() + " batches among the newest " + all.length + "."
    : "No batches yet.";
  const active = all.filter((b) => !TERMINAL.has(b.status)).length;
  $("batches-note").textContent =
    active + " active of " + all.length + (listed.has_more ? " (the newest " + LISTED + ")" : "");
}

// The buttons are made once and then only updated, so a poll never takes focus from one.
function drawFilters(wanted, howMany) {
  const nav = $("filters");
  if (!nav.children.length) {
    for (const f of FILTERS) {
      const button = el("button", { type: "button", "data-filter": f.name }, f.label, " ", el("span", { class: "n" }));
      button.addEventListener("click", () => { location.hash = filterLink(f.name); });
      nav.append(button);
    }
  }
  for (const button of nav.children) {
    const f = FILTERS.find((one) => one.name === button.dataset.filter);
    button.setAttribute("aria-pressed", String(f === wanted));
    button.querySelector(".n").textContent = listed ? String(howMany(f)) : "";
  }
}

// "line 2: …" unless the message names its line itself (the split's do).
export function errorText(error) {
  const message = error.message || error.code || "error";
  const named = error.line && message.toLowerCase().includes("line " + error.line);
  return (error.line && !named ? "line " + error.line + ": " : "") + message;
}

// Rows are kept across polls, keyed by batch, and their link cell is made once: a click never
// lands on a link that a poll has just replaced.
const rows = new Map();

function renderRows(shown) {
  const ids = new Set(listed.data.map((batch) => batch.id));
  for (const id of rows.keys()) if (!ids.has(id)) rows.delete(id);
  const wanted = shown.map(batchRow);
  const body = $("batches").tBodies[0];
  const same = wanted.length === body.rows.length && wanted.every((row, i) => body.rows[i] === row);
  if (!same) body.replaceChildren(...wanted);
}

function batchRow(batch) {
  let row = rows.get(batch.id);
  if (!row) {
    const link = el("a", { href: "#/batches/" + encodeURIComponent(batch.id), title: "open this batch" },
      el("code", { class: "id" }, batch.id));
    row = el("tr", { "data-batch-id": batch.id }, el("td", {}, link, el("div", { class: "muted small" })));
    rows.set(batch.id, row);
  }
  row.cells[0].lastChild.textContent = [
    "created " + ago(batch.created_at),
    batch.priority && batch.priority !== "normal" ? batch.priority : null,
    ...Object.entries(batch.metadata || {}).map(([k, v]) => k + "=" + v),
  ].filter(Boolean).join(" · ");
  const cells = batchCells(batch);
  if (row.cells.length === 1) row.append(...cells);
  else cells.forEach((cell, i) => row.cells[i + 1].replaceWith(cell));
  return row;
}

function batchCells(batch) {
  const counts = countsOf(batch);
  const extra = batch.hotbatch || {};
  const firstError = batch.errors && batch.errors.data && batch.errors.data[0];
  const running = batch.status === "in_progress" || batch.status === "finalizing";
  const perSecond = requestsPerSecond(batch);
  return [
    el("td", {}, pill(batch.status),
      firstError ? el("div", { class: "bad small row-error", title: errorText(firstError) }, errorText(firstError)) : null),
    el("td", {}, progressBar(batch.status, counts)),
    el("td", { class: "num" },
      count(counts.completed + counts.failed) + " / " + count(counts.total),
      counts.failed ? el("div", { class: "bad small" }, count(counts.failed) + " failed") : null),
    el("td", { class: "num" }, rate(extra.tokens_per_second, "tok/s"),
      isNum(perSecond) ? el("div", { class: "muted small" }, rate(perSecond, "req/s")) : null),
    el("td", { class: "num" }, running && isNum(extra.eta_at) ? eta(extra.eta_at) : DASH),
    el("td", { class: "num" }, money(extra.cost_usd)),
    el("td", { class: "num" }, duration(extra.engine_seconds)),
  ];
}

// --- health: the last hour, judged by /v1/health -------------------------------------------

const COMPONENTS = { gpu: "GPUs", workers: "Workers", queue: "Queue", endpoint: "Endpoint" };
// What each metric of /v1/health is, in words; in this order. A metric not named here is shown
// under its own name, spaced out.
const LABELS = {
  mean_utilization_percent: "Utilisation while work waited",
  latest_utilization_percent: "Utilisation, latest",
  latest_memory_percent: "Memory, latest",
  latest_kv_cache_usage_percent: "KV cache, latest",
  readings_while_waiting: "Readings while work waited",
  idle_share_while_waiting: "Idle while work waited",
  warm_latest: "Warm now",
  warm_mean: "Warm on average",
  initializing_latest: "Starting now",
  unhealthy_latest: "Unhealthy now",
  keep_hot_target: "Keep-hot target",
  pending_chunks: "Chunks waiting",
  in_flight_chunks: "Chunks running",
  pending_chunks_max: "Most chunks waiting",
  oldest_pending_age_s: "Oldest waiting chunk",
  oldest_backfill_age_s: "Oldest waiting backfill",
  max_pending_age_s: "Longest wait",
  breaker: "Circuit breaker",
  open_share: "Breaker open",
  window_latest: "In-flight window (chunks)",
  health_read_failures: "RunPod /health failures",
};
const HIDDEN = new Set(["latest_reading_worker"]); // an id: in the card's title instead

function metricLabel(name) {
  if (LABELS[name]) return LABELS[name];
  const words = name.replace(/_s$/, "").replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function metricText(name, value) {
  if (!isNum(value)) return String(value);
  if (name.endsWith("_percent")) return value.toFixed(1) + " %";
  if (name.endsWith("_share") || name.endsWith("_share_while_waiting")) return percent(value);
  if (name.endsWith("_s")) return duration(value);
  return count(Math.round(value * 10) / 10);
}

export async function refreshHealth() {
  const health = await api("v1/health");
  const overall = $("overall");
  overall.textContent = "health " + health.status;
  overall.className = "pill health-" + health.status;
  const cards = Object.entries(health.components).map(([name, component]) => {
    const metrics = el("dl", {});
    const names = [
      ...Object.keys(LABELS).filter((m) => m in component.metrics),
      ...Object.keys(component.metrics).filter((m) => !(m in LABELS) && !HIDDEN.has(m)),
    ];
    for (const metric of names) {
      const value = component.metrics[metric];
      if (value === null || value === undefined) continue;
      metrics.append(el("dt", { title: metric }, metricLabel(metric)), el("dd", {}, metricText(metric, value)));
    }
    const reader = component.metrics.latest_reading_worker;
    return el("div", { class: "card health-" + component.status, "data-component": name, title: reader ? "latest reading from " + reader : "" },
      el("div", { class: "card-head" }, el("strong", {}, COMPONENTS[name] || metricLabel(name)),
        el("span", { class: "pill health-" + component.status }, component.status)),
      component.note ? el("p", { class: "muted small" }, component.note) : null,
      metrics);
  });
  $("components").replaceChildren(...cards);
}

// --- the fleet: /v1/health/samples charted -------------------------------------------------

export async function refreshHistory() {
  const hours = Number($("hours").value);
  const since = Math.floor(Date.now() / 1000 - hours * 3600);
  const series = await api("v1/health/samples?since=" + since);
  const pick = (field, scale = 1, offset = 0) => series.points
    .filter((p) => isNum(p[field]))
    .map((p) => [p.at, offset + p[field] * scale]);
  // From the first sample when the window reaches further back (a stack started minutes ago).
  const first = series.points.length ? series.points[0].at : series.since;
  const frame = { since: Math.max(series.since, first), until: series.until, step: series.step_s };
  const pct = (v) => v.toFixed(1) + " %";
  drawChart($("chart-gpu"), {
    ...frame, percent: true, thresholds: [75, 50], format: pct,
    lines: [
      { points: pick("gpu_utilization_percent"), cls: "s0" },
      { points: pick("gpu_memory_percent"), cls: "s1" },
      { points: pick("kv_cache_usage_percent"), cls: "s2" },
    ],
    empty: "no GPU reading in this window (workers report them with their chunks and pings)",
  });
  // Busy is the complement of the idle share /v1/health rates (healthy ≤ 25 % idle).
  drawChart($("chart-busy"), {
    ...frame, percent: true, thresholds: [75, 50], format: pct,
    lines: [
      { points: pick("idle_share_while_waiting", -100, 100), cls: "s0" },
      { points: pick("idle_share", -100, 100), cls: "s1" },
    ],
    empty: "no warm worker in this window",
  });
  const workers = (v) => (Math.round(v * 10) / 10) + " workers";
  drawChart($("chart-workers"), {
    ...frame, whole: true, format: workers,
    lines: [{ points: pick("warm_workers"), cls: "s0" }],
    empty: "RunPod's worker counts were not read in this window",
  });
  drawChart($("chart-queue"), {
    ...frame, whole: true, format: (v) => count(v) + " chunks",
    lines: [
      { points: pick("pending_chunks"), cls: "s0" },
      { points: pick("in_flight_chunks"), cls: "s1" },
    ],
    empty: "no sample in this window: is the tick running?",
  });
  let note = series.samples.toLocaleString("en-US") + " samples, " + duration(series.step_s) + " per point";
  if (series.truncated && series.points.length) note += "; only the newest are read";
  if (frame.since > series.since) note += "; the first from " + clock(frame.since, true);
  $("history-note").textContent = note;
  $("history").dataset.hours = String(hours); // what the charts show now (tests wait for it)
}
