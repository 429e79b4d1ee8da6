// One batch (#/batches/{id}): its state and figures, errors, progress over time, timeline,
// dead letters, and what an operator does to it: cancel, retry the dead letters, download.

import { ApiError, api, batchPath, download } from "./api.js";
import { drawChart } from "./charts.js";
import {
  $, CANCELLABLE, DASH, TERMINAL, ago, cacheHitRate, count, countsOf, duration, el, endedAt,
  isNum, money, nowS, percent, progressBar, rate, requestsPerSecond, statusText, when,
} from "./dom.js";
import { errorText } from "./overview.js";

const PROGRESS_EVERY_S = 5; // the chunk timeline, while the batch runs
const CONFIRM_MS = 4000; // a first click on Cancel arms it for this long
const DEAD_LETTERS_SHOWN = 1000;
const RESULT_STATES = ["done", "dead", "expired"]; // chunks that carry their final counts

const page = { id: null, batch: null, progress: null, seen: "", progressAt: 0, armed: null };

// A new batch (or the same one opened again): nothing of the last one stays on the page.
export function openBatch(batchId) {
  Object.assign(page, { id: batchId, batch: null, progress: null, seen: "", progressAt: 0 });
  disarm();
  $("batch-id").textContent = batchId;
  $("batch-status").hidden = true;
  for (const id of ["batch-sub", "action-result", "redrive-result", "progress-note", "dead-note"]) {
    $(id).textContent = "";
  }
  for (const id of ["batch-progress", "batch-figures", "timeline", "chart-progress"]) $(id).replaceChildren();
  delete $("chart-progress").dataset.points;
  delete $("view-batch").dataset.batchId;
  $("error-list").tBodies[0].replaceChildren();
  $("dead-letters").tBodies[0].replaceChildren();
  $("batch-errors").hidden = true;
  $("dead").hidden = true;
  for (const id of ["cancel", "download-output", "download-errors", "download-input"]) $(id).hidden = true;
}

export async function refreshBatch() {
  const batchId = page.id;
  let batch;
  try {
    batch = await api(batchPath(batchId));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && batchId === page.id) {
      $("batch-sub").textContent = "No such batch for this key.";
      return;
    }
    throw error;
  }
  if (batchId !== page.id) return;
  page.batch = batch;
  const seen = JSON.stringify([batch.status, batch.request_counts]);
  const due = !TERMINAL.has(batch.status) && nowS() - page.progressAt >= PROGRESS_EVERY_S;
  if (seen !== page.seen || due) {
    const changed = seen !== page.seen;
    page.seen = seen;
    page.progressAt = nowS();
    const [progress] = await Promise.all([
      api(batchPath(batchId) + "/progress"),
      changed ? refreshDeadLetters() : null,
    ]);
    if (batchId !== page.id) return;
    page.progress = progress;
  }
  render(batch, page.progress);
  $("view-batch").dataset.batchId = batchId; // drawn: what tests and screenshots wait for
}

function render(batch, progress) {
  const status = $("batch-status");
  status.className = "pill status-" + batch.status;
  status.textContent = statusText(batch.status);
  status.hidden = false;
  $("batch-sub").textContent = [
    "created " + ago(batch.created_at),
    batch.model,
    batch.endpoint,
    batch.priority !== "normal" ? batch.priority + " priority" : null,
    ...Object.entries(batch.metadata || {}).map(([k, v]) => k + "=" + v),
  ].filter(Boolean).join(" · ");
  renderActions(batch);
  $("batch-progress").replaceChildren(progressBar(batch.status, countsOf(batch)));
  $("batch-figures").replaceChildren(...figures(batch, progress));
  renderErrors(batch);
  renderTimeline(batch);
  drawProgress(batch, progress);
}

// --- figures -------------------------------------------------------------------------------

function figure(label, value, sub, name) {
  return el("div", { class: "figure", "data-figure": name },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    sub ? el("div", { class: "sub" }, sub) : null);
}

function figures(batch, progress) {
  const counts = countsOf(batch);
  const extra = batch.hotbatch || {};
  const usage = batch.usage || {};
  const running = !TERMINAL.has(batch.status);
  const ends = endedAt(batch);
  const left = isNum(extra.eta_at) ? extra.eta_at - nowS() : null;
  const chunks = progress ? progress.chunks : {};
  const chunkWords = Object.entries(chunks).sort((a, b) => b[1] - a[1]).map(([state, n]) => n + " " + state);
  return [
    figure("Requests", count(counts.completed + counts.failed) + " / " + count(counts.total),
      counts.failed ? count(counts.failed) + " failed" : "none failed", "requests"),
    figure("Throughput", rate(extra.tokens_per_second, "tok/s"), rate(requestsPerSecond(batch), "req/s"), "throughput"),
    figure("ETA", running && isNum(left) ? (left > 0 ? "in " + duration(left) : "any moment") : DASH,
      running && isNum(extra.eta_at) ? when(extra.eta_at) : running ? "after its first chunk" : "finished", "eta"),
    figure(running ? "Running for" : "Ran for", batch.in_progress_at ? duration((ends || nowS()) - batch.in_progress_at) : DASH,
      batch.in_progress_at ? "since " + when(batch.in_progress_at) : "not started", "running"),
    figure("Cost", money(extra.cost_usd), isNum(extra.cost_usd) ? "engine time × GPU price" : "no GPU price set", "cost"),
    figure("Engine time", duration(extra.engine_seconds),
      progress && isNum(progress.engine_busy_share)
        ? percent(progress.engine_busy_share) + " busy on " + progress.workers + (progress.workers === 1 ? " worker" : " workers")
        : null, "engine"),
    figure("Cache hits", percent(cacheHitRate(batch)), "of prompt tokens", "cache"),
    figure("Tokens", count(usage.input_tokens) + " in", count(usage.output_tokens) + " out", "tokens"),
    figure("Chunks", progress ? count(Object.values(chunks).reduce((a, b) => a + b, 0)) : DASH,
      chunkWords.join(", ") || null, "chunks"),
  ];
}

// --- actions -------------------------------------------------------------------------------

function renderActions(batch) {
  const cancel = $("cancel");
  cancel.hidden = !CANCELLABLE.has(batch.status) && batch.status !== "cancelling";
  cancel.disabled = batch.status === "cancelling";
  if (batch.status === "cancelling") cancel.textContent = "Cancelling…";
  else if (!page.armed) cancel.textContent = "Cancel batch";
  const files = [
    ["download-output", batch.output_file_id],
    ["download-errors", batch.error_file_id],
    ["download-input", batch.input_file_id],
  ];
  for (const [id, fileId] of files) $(id).hidden = !fileId;
}

function disarm() {
  clearTimeout(page.armed);
  page.armed = null;
  $("cancel").textContent = "Cancel batch";
}

function say(text, good) {
  const result = $("action-result");
  result.className = good ? "good" : "bad";
  result.textContent = text;
}

// Two clicks: the first arms the button for a few seconds, the second cancels.
export async function cancelBatch() {
  const batchId = page.id;
  if (!page.armed) {
    $("cancel").textContent = "Click again to cancel";
    page.armed = setTimeout(disarm, CONFIRM_MS);
    return;
  }
  disarm();
  $("cancel").disabled = true;
  try {
    const batch = await api(batchPath(batchId) + "/cancel", { method: "POST" });
    say("Cancel requested: the batch is " + statusText(batch.status) + ".", true);
    if (batchId === page.id) await refreshBatch();
  } catch (error) {
    say("Cancel refused: " + error.message);
    $("cancel").disabled = false;
  }
}

export async function downloadFile(which) {
  const batch = page.batch;
  if (!batch) return;
  const fileId = batch[which + "_file_id"];
  const name = which === "input" ? batch.id + "_input.jsonl" : batch.id + "_" + which + ".jsonl";
  try {
    await download(fileId, name);
    say("Saved " + name + ".", true);
  } catch (error) {
    say("Download failed: " + error.message);
  }
}

// --- errors and timeline -------------------------------------------------------------------

function renderErrors(batch) {
  const errors = (batch.errors && batch.errors.data) || [];
  $("batch-errors").hidden = errors.length === 0;
  $("errors-note").textContent = errors.length ? errors.length + (errors.length === 1 ? " error" : " errors") : "";
  $("error-list").tBodies[0].replaceChildren(...errors.map((error) => el("tr", {},
    el("td", { class: "num" }, isNum(error.line) ? count(error.line) : DASH),
    el("td", {}, error.code ? el("code", {}, error.code) : DASH),
    el("td", {}, error.param || DASH),
    el("td", { class: "error-message" }, error.message || errorText(error)))));
}

const STEPS = [
  ["created_at", "created"],
  ["in_progress_at", "in progress"],
  ["finalizing_at", "finalizing"],
  ["completed_at", "completed"],
  ["failed_at", "failed"],
  ["cancelling_at", "cancelling"],
  ["cancelled_at", "cancelled"],
  ["expired_at", "expired"],
];

function renderTimeline(batch) {
  const steps = STEPS.filter(([field]) => isNum(batch[field]))
    .map(([field, label]) => ({ at: batch[field], label }))
    .sort((a, b) => a.at - b.at);
  if (!TERMINAL.has(batch.status) && isNum(batch.expires_at)) {
    steps.push({ at: batch.expires_at, label: "completion window ends", future: true });
  }
  $("timeline").replaceChildren(...steps.map((step, i) => el("li", {},
    el("span", { class: "when" }, when(step.at)),
    el("span", { class: "step" }, step.label),
    i > 0 ? el("span", { class: "took" }, (step.future ? "in " + duration(step.at - nowS()) : "after " + duration(step.at - steps[i - 1].at))) : null)));
}

// --- progress over time --------------------------------------------------------------------

function drawProgress(batch, progress) {
  const counts = countsOf(batch);
  const extra = batch.hotbatch || {};
  const running = !TERMINAL.has(batch.status);
  const points = progress ? progress.points : [];
  const since = (progress && progress.started_at) || batch.in_progress_at || batch.created_at;
  const now = nowS();
  const completed = points.map((p) => [p.at, p.completed]);
  const failed = points.map((p) => [p.at, p.failed]);
  if (running && batch.in_progress_at) {
    // The requests running chunks have answered so far are in the batch's counts only.
    completed.push([now, counts.completed]);
    failed.push([now, counts.failed]);
  }
  const lines = [{ points: completed, cls: "good" }];
  if (counts.failed || failed.some((p) => p[1] > 0)) lines.push({ points: failed, cls: "bad" });
  const eta = running && isNum(extra.eta_at) && counts.total ? extra.eta_at : null;
  if (eta) lines.push({ points: [[now, counts.completed + counts.failed], [Math.max(eta, now), counts.total]], cls: "projection" });
  const until = Math.max(since + 1, eta || 0, running ? now : endedAt(batch) || now, ...points.map((p) => p.at));
  drawChart($("chart-progress"), {
    since, until, whole: true, highest: counts.total, lines,
    format: (v) => count(v) + " requests",
    empty: batch.in_progress_at ? "no chunk has finished yet"
      : TERMINAL.has(batch.status) ? "it never ran" : "not started: the input is being split",
  });
  const results = progress ? RESULT_STATES.reduce((n, state) => n + (progress.chunks[state] || 0), 0) : 0;
  const note = progress
    ? count(results) + (results === 1 ? " chunk result" : " chunk results") + (progress.truncated ? " (of the first 5,000 chunks)" : "")
    : "";
  $("progress-note").textContent = note;
}

// --- dead letters and retry ----------------------------------------------------------------

async function refreshDeadLetters() {
  const batchId = page.id;
  const letters = await api(batchPath(batchId) + "/dead_letters?limit=" + DEAD_LETTERS_SHOWN);
  if (batchId !== page.id) return;
  const checked = new Set(selectedCustomIds());
  const rows = letters.data.map((letter) => {
    // A tick updates the label through the table's own change listener (app.js).
    const box = el("input", { type: "checkbox", checked: checked.has(letter.custom_id), "data-custom-id": letter.custom_id });
    return el("tr", {},
      el("td", {}, box),
      el("td", {}, el("code", {}, letter.custom_id)),
      el("td", { class: "num" }, letter.status_code),
      el("td", {}, letter.code || letter.type || DASH),
      el("td", { class: "message-cell", title: letter.message }, letter.message),
      el("td", { class: "num" }, letter.attempts),
      el("td", {}, letter.chunk_id));
  });
  // A batch that never ran has none to show.
  $("dead").hidden = rows.length === 0 && !page.batch?.in_progress_at;
  $("redrive").hidden = rows.length === 0;
  $("dead-letters").tBodies[0].replaceChildren(...rows);
  $("dead-letters").hidden = rows.length === 0;
  $("dead-empty").hidden = rows.length > 0;
  $("dead-note").textContent = rows.length
    ? rows.length + (letters.has_more ? "+ (the first 1,000 shown)" : "") + " failed for good"
    : "";
  $("dead-all").checked = false;
  updateRetryLabel();
}

function selectedCustomIds() {
  return [...$("dead-letters").querySelectorAll("tbody input:checked")].map((box) => box.dataset.customId);
}

export function updateRetryLabel() {
  const rows = $("dead-letters").tBodies[0].rows.length;
  const picked = selectedCustomIds().length;
  const button = $("redrive");
  button.disabled = rows === 0;
  button.textContent = picked ? "Retry selected (" + picked + ")" : "Retry all (" + rows + ")";
}

export function selectAllDeadLetters(checked) {
  for (const box of $("dead-letters").querySelectorAll("tbody input")) box.checked = checked;
  updateRetryLabel();
}

export async function retryDeadLetters() {
  const batchId = page.id;
  const picked = selectedCustomIds();
  const result = $("redrive-result");
  $("redrive").disabled = true;
  result.className = "";
  result.textContent = "retrying…";
  try {
    const body = picked.length ? { custom_ids: picked } : {};
    const batch = await api(batchPath(batchId) + "/retry", { method: "POST", body });
    result.className = "good";
    result.textContent = "Retry started: the batch is " + statusText(batch.status) + ".";
    if (batchId === page.id) await refreshBatch();
  } catch (error) {
    result.className = "bad";
    result.textContent = "Retry refused: " + error.message;
    updateRetryLabel();
  }
}
