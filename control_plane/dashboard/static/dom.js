// Small DOM and formatting helpers. Every value from the API goes into the page as text (a
// text node or an attribute), never as markup.

const SVG = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-") || name.startsWith("aria-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

export const DASH = "—";
export const isNum = (x) => typeof x === "number" && Number.isFinite(x);
export const count = (n) => (isNum(n) ? n.toLocaleString("en-US") : DASH);
export const nowS = () => Date.now() / 1000;
export const statusText = (status) => status.replace("_", " ");

export function clock(seconds, withSeconds) {
  const options = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (withSeconds) options.second = "2-digit";
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", options);
}

// The time of day, with the date in front when it is not today.
export function when(seconds) {
  const date = new Date(seconds * 1000);
  const time = clock(seconds, true);
  if (date.toDateString() === new Date().toDateString()) return time;
  return date.toLocaleDateString("en-GB", { day: "numeric", month: "short" }) + " " + time;
}

export function duration(seconds) {
  if (!isNum(seconds)) return DASH;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  const h = Math.floor(s / 3600);
  return h + " h " + Math.floor((s % 3600) / 60) + " min";
}

export const ago = (seconds) => duration(nowS() - seconds) + " ago";

export function money(usd) {
  if (!isNum(usd)) return DASH;
  if (usd === 0) return "$0.00";
  return "$" + (usd >= 100 ? usd.toFixed(0) : usd >= 1 ? usd.toFixed(2) : usd.toFixed(4));
}

export function percent(share) {
  return isNum(share) ? (share * 100).toFixed(share >= 0.1 ? 0 : 1) + " %" : DASH;
}

export function rate(value, unit) {
  if (!isNum(value)) return DASH;
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return value.toLocaleString("en-US", { maximumFractionDigits: digits }) + " " + unit;
}

// --- what a batch object says, shared by the list and the batch page ------------------------

export const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
export const CANCELLABLE = new Set(["validating", "in_progress", "finalizing"]);

export function countsOf(batch) {
  return batch.request_counts || { total: 0, completed: 0, failed: 0 };
}

// When it ended (or now, while it runs), for its running time and requests per second.
export function endedAt(batch) {
  return batch.finalizing_at || batch.completed_at || batch.failed_at || batch.cancelled_at ||
    batch.expired_at || null;
}

function runningSeconds(batch) {
  if (!batch.in_progress_at) return null;
  return Math.max(0, (endedAt(batch) || nowS()) - batch.in_progress_at);
}

export function requestsPerSecond(batch) {
  const counts = countsOf(batch);
  const seconds = runningSeconds(batch);
  const done = counts.completed + counts.failed;
  return seconds && done ? done / seconds : null;
}

// The batch's own figure when it carries one; otherwise OpenAI's usage says the same thing.
export function cacheHitRate(batch) {
  const extra = batch.hotbatch || {};
  if (isNum(extra.cache_hit_rate)) return extra.cache_hit_rate;
  const usage = batch.usage;
  if (!usage || !usage.input_tokens) return null;
  return (usage.input_tokens_details?.cached_tokens || 0) / usage.input_tokens;
}

export function pill(status) {
  return el("span", { class: "pill status-" + status }, statusText(status));
}

export function progressBar(status, counts) {
  const total = counts.total || 0;
  const splitting = !total && status === "validating"; // striped until the count is known
  const bar = el("div", { class: "progress" + (splitting ? " unknown" : ""), role: "progressbar" });
  if (total) {
    const done = el("span", { class: "done" });
    const failed = el("span", { class: "failed" });
    // CSSOM writes are allowed under style-src 'self'; style attributes are not.
    done.style.width = (100 * counts.completed) / total + "%";
    failed.style.width = (100 * counts.failed) / total + "%";
    bar.append(done, failed);
    bar.setAttribute("aria-valuenow", String(Math.round((100 * (counts.completed + counts.failed)) / total)));
  }
  const share = total
    ? Math.floor((100 * (counts.completed + counts.failed)) / total) + " %"
    : splitting ? "splitting" : "";
  return el("div", { class: "progress-cell" }, bar, el("span", { class: "progress-label" }, share));
}

export function eta(at) {
  const left = at - nowS();
  return el("span", { title: new Date(at * 1000).toString() },
    left > 0 ? "in " + duration(left) : "any moment", el("div", { class: "muted small" }, clock(at)));
}
