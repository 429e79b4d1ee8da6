// hotbatch dashboard: polls the /v1 API with the operator's key and draws what it answers.
// No library and no inline code (the page's CSP allows only this origin's files). Every value
// from the API is put in the page as text, never as markup.
"use strict";

(() => {
  const KEY_STORE = "hotbatch.key";
  const BATCHES_EVERY_MS = 2000;
  const HEALTH_EVERY_MS = 15000;
  const HISTORY_EVERY_MS = 60000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = { key: null, selected: null, selectedCounts: "", timers: [], generation: 0 };

  // --- the key: typed in, or given once in the fragment (#key=…), kept for this tab only ----

  function takeKeyFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const key = params.get("key");
    if (key) {
      sessionStorage.setItem(KEY_STORE, key.trim());
      // Out of the address bar and the history entry, so it is not copied or bookmarked.
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function useKey(key) {
    state.key = key;
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

  // --- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Authorization: "Bearer " + state.key };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const reply = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
      credentials: "omit",
    });
    const body = await reply.json().catch(() => null);
    if (!reply.ok) {
      const message = (body && body.error && body.error.message) || reply.statusText;
      if (reply.status === 401) forgetKey("The API key was refused: " + message);
      throw new ApiError(reply.status, message);
    }
    return body;
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
            if (current()) {
              const why = error instanceof ApiError
                ? "The API answered " + error.status + ": " + error.message
                : "Cannot reach the API (" + error.message + ")";
              say(why + "; retrying.", "lost");
            }
          }
        }
        if (current()) state.timers.push(setTimeout(run, ms));
      };
      run();
    };
    every(BATCHES_EVERY_MS, refreshBatches);
    every(HEALTH_EVERY_MS, refreshHealth);
    every(HISTORY_EVERY_MS, refreshHistory);
  }

  function stopPolling() {
    state.generation++;
    state.timers.forEach(clearTimeout);
    state.timers = [];
  }

  // --- small DOM and formatting helpers ------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const DASH = "—";
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const count = (n) => (isNum(n) ? n.toLocaleString("en-US") : DASH);

  function clock(seconds, withSeconds) {
    const options = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (withSeconds) options.second = "2-digit";
    return new Date(seconds * 1000).toLocaleTimeString("en-GB", options);
  }

  function duration(seconds) {
    if (!isNum(seconds)) return DASH;
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    const h = Math.floor(s / 3600);
    return h + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function ago(seconds) {
    return duration(Date.now() / 1000 - seconds) + " ago";
  }

  function money(usd) {
    if (!isNum(usd)) return DASH;
    return "$" + (usd >= 100 ? usd.toFixed(0) : usd >= 1 ? usd.toFixed(2) : usd.toFixed(4));
  }

  function percent(share) {
    return isNum(share) ? (share * 100).toFixed(share >= 0.1 ? 0 : 1) + " %" : DASH;
  }

  // --- batches -------------------------------------------------------------------------------

  const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);

  async function refreshBatches() {
    const page = await api("v1/batches?limit=100");
    const rows = page.data.map(batchRow);
    $("batches").tBodies[0].replaceChildren(...rows);
    $("batches-empty").hidden = rows.length > 0;
    $("batches").hidden = rows.length === 0;
    const active = page.data.filter((b) => !TERMINAL.has(b.status)).length;
    $("batches-note").textContent =
      active + " active of " + page.data.length + (page.has_more ? " newest" : "");
    const selected = page.data.find((b) => b.id === state.selected);
    if (selected) {
      const counts = JSON.stringify([selected.status, selected.request_counts]);
      if (counts !== state.selectedCounts) {
        state.selectedCounts = counts;
        await refreshDeadLetters();
      }
    }
  }

  function batchRow(batch) {
    const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
    const extra = batch.hotbatch || {};
    const row = el("tr", { class: batch.id === state.selected ? "selected" : "", "data-batch-id": batch.id });
    const label = el("td", {},
      el("code", { class: "id" }, batch.id),
      el("div", { class: "muted small" },
        "created " + ago(batch.created_at),
        batch.priority && batch.priority !== "normal" ? " · " + batch.priority : "",
        batch.metadata && Object.keys(batch.metadata).length
          ? " · " + Object.entries(batch.metadata).map(([k, v]) => k + "=" + v).join(" ")
          : ""));
    const running = batch.status === "in_progress" || batch.status === "finalizing";
    row.append(
      label,
      el("td", {}, el("span", { class: "pill status-" + batch.status }, batch.status.replace("_", " "))),
      el("td", {}, progressBar(batch.status, counts)),
      el("td", { class: "num" },
        count(counts.completed + counts.failed) + " / " + count(counts.total),
        counts.failed ? el("div", { class: "bad small" }, count(counts.failed) + " failed") : null),
      el("td", { class: "num" }, isNum(extra.tokens_per_second)
        ? Math.round(extra.tokens_per_second).toLocaleString("en-US") + " tok/s" : DASH),
      el("td", { class: "num" }, running && isNum(extra.eta_at) ? eta(extra.eta_at) : DASH),
      el("td", { class: "num" }, money(extra.cost_usd)),
      el("td", { class: "num" }, percent(cacheHitRate(batch))),
      el("td", { class: "num" }, duration(extra.engine_seconds)),
      el("td", {}, deadLettersButton(batch)),
    );
    return row;
  }

  // The batch's own figure when it carries one; otherwise OpenAI's usage says the same thing.
  function cacheHitRate(batch) {
    const extra = batch.hotbatch || {};
    if (isNum(extra.cache_hit_rate)) return extra.cache_hit_rate;
    const usage = batch.usage;
    if (!usage || !usage.input_tokens) return null;
    return (usage.input_tokens_details?.cached_tokens || 0) / usage.input_tokens;
  }

  function eta(at) {
    const left = at - Date.now() / 1000;
    return el("span", { title: new Date(at * 1000).toString() },
      left > 0 ? "in " + duration(left) : "any moment", el("div", { class: "muted small" }, clock(at)));
  }

  function progressBar(status, counts) {
    const total = counts.total || 0;
    const bar = el("div", { class: "progress" + (total ? "" : " unknown"), role: "progressbar" });
    if (total) {
      const done = el("span", { class: "done" });
      const failed = el("span", { class: "failed" });
      // CSSOM writes are allowed under style-src 'self'; style attributes are not.
      done.style.width = (100 * counts.completed) / total + "%";
      failed.style.width = (100 * counts.failed) / total + "%";
      bar.append(done, failed);
      bar.setAttribute("aria-valuenow", String(Math.round((100 * (counts.completed + counts.failed)) / total)));
    }
    const share = total ? Math.floor((100 * (counts.completed + counts.failed)) / total) + " %" : status === "validating" ? "splitting" : "";
    return el("div", { class: "progress-cell" }, bar, el("span", { class: "progress-label" }, share));
  }

  function deadLettersButton(batch) {
    const failed = (batch.request_counts && batch.request_counts.failed) || 0;
    const button = el("button", { type: "button", class: "quiet small", title: "dead letters and redrive" },
      failed ? "dead letters (" + failed + ")" : "dead letters");
    button.addEventListener("click", () => selectBatch(batch.id));
    return button;
  }

  // --- dead letters and redrive -------------------------------------------------------------

  function selectBatch(batchId) {
    state.selected = batchId;
    state.selectedCounts = "";
    $("redrive-result").textContent = "";
    for (const row of $("batches").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.batchId === batchId);
    }
    $("dead").hidden = !batchId;
    if (batchId) {
      $("dead-batch").textContent = batchId;
      refreshDeadLetters().catch((error) => { $("dead-note").textContent = error.message; });
      $("dead").scrollIntoView({ block: "nearest" });
    }
  }

  async function refreshDeadLetters() {
    const batchId = state.selected;
    if (!batchId) return;
    const page = await api("v1/batches/" + encodeURIComponent(batchId) + "/dead_letters?limit=1000");
    if (batchId !== state.selected) return;
    const checked = new Set(selectedCustomIds());
    const rows = page.data.map((letter) => {
      const box = el("input", { type: "checkbox", checked: checked.has(letter.custom_id), "data-custom-id": letter.custom_id });
      box.addEventListener("change", updateRedriveLabel);
      return el("tr", {},
        el("td", {}, box),
        el("td", {}, el("code", {}, letter.custom_id)),
        el("td", { class: "num" }, letter.status_code),
        el("td", {}, letter.code || letter.type || DASH),
        el("td", { class: "message-cell", title: letter.message }, letter.message),
        el("td", { class: "num" }, letter.attempts),
        el("td", {}, letter.chunk_id));
    });
    $("dead-letters").tBodies[0].replaceChildren(...rows);
    $("dead-letters").hidden = rows.length === 0;
    $("dead-empty").hidden = rows.length > 0;
    $("dead-note").textContent = rows.length
      ? rows.length + (page.has_more ? "+ (the first 1,000 shown)" : "") + " failed for good"
      : "";
    $("dead-all").checked = false;
    updateRedriveLabel();
  }

  function selectedCustomIds() {
    return [...$("dead-letters").querySelectorAll("tbody input:checked")].map((box) => box.dataset.customId);
  }

  function updateRedriveLabel() {
    const rows = $("dead-letters").tBodies[0].rows.length;
    const picked = selectedCustomIds().length;
    const button = $("redrive");
    button.disabled = rows === 0;
    button.textContent = picked ? "Redrive selected (" + picked + ")" : "Redrive all (" + rows + ")";
  }

  async function redrive() {
    const batchId = state.selected;
    const picked = selectedCustomIds();
    const result = $("redrive-result");
    $("redrive").disabled = true;
    result.className = "";
    result.textContent = "redriving…";
    try {
      const body = picked.length ? { custom_ids: picked } : {};
      const batch = await api("v1/batches/" + encodeURIComponent(batchId) + "/retry", { method: "POST", body });
      result.className = "good";
      result.textContent = "Redrive started: the batch is " + batch.status.replace("_", " ") + ".";
      await refreshBatches();
    } catch (error) {
      result.className = "bad";
      result.textContent = "Redrive refused: " + error.message;
      updateRedriveLabel();
    }
  }

  // --- health --------------------------------------------------------------------------------

  const SHOWN_METRICS = {
    gpu: ["mean_utilization_percent", "latest_utilization_percent", "latest_memory_percent", "latest_kv_cache_usage_percent"],
    workers: ["idle_share_while_waiting", "warm_latest", "initializing_latest", "unhealthy_latest", "keep_hot_target"],
    queue: ["pending_chunks", "in_flight_chunks", "oldest_pending_age_s", "max_pending_age_s"],
    endpoint: ["breaker", "window_latest", "open_share", "health_read_failures"],
  };

  async function refreshHealth() {
    const health = await api("v1/health");
    const overall = $("overall");
    overall.textContent = "health " + health.status;
    overall.className = "pill health-" + health.status;
    const cards = Object.entries(health.components).map(([name, component]) => {
      const metrics = el("dl", {});
      for (const metric of SHOWN_METRICS[name] || []) {
        const value = component.metrics[metric];
        if (value === null || value === undefined) continue;
        metrics.append(el("dt", {}, metric.replaceAll("_", " ")), el("dd", {}, metricText(metric, value)));
      }
      return el("div", { class: "card health-" + component.status, "data-component": name },
        el("div", { class: "card-head" }, el("strong", {}, name), el("span", { class: "pill health-" + component.status }, component.status)),
        component.note ? el("p", { class: "muted small" }, component.note) : null,
        metrics);
    });
    $("components").replaceChildren(...cards);
  }

  function metricText(name, value) {
    if (!isNum(value)) return String(value);
    if (name.endsWith("_percent")) return value.toFixed(1) + " %";
    if (name.endsWith("_share") || name.endsWith("_share_while_waiting")) return percent(value);
    if (name.endsWith("_s")) return duration(value);
    return count(Math.round(value * 10) / 10);
  }

  // --- charts: inline SVG line charts of the downsampled health samples --------------------

  async function refreshHistory() {
    const hours = Number($("hours").value);
    const since = Math.floor(Date.now() / 1000) - hours * 3600;
    const series = await api("v1/health/samples?since=" + since);
    const pick = (field, scale = 1) => series.points
      .filter((p) => isNum(p[field]))
      .map((p) => [p.at, p[field] * scale]);
    const frame = { since: series.since, until: series.until, step: series.step_s };
    drawChart($("chart-gpu"), frame, [pick("gpu_utilization_percent"), pick("gpu_memory_percent")],
      [75, 50], "no GPU reading in this window (readings come from workers' health reports)");
    drawChart($("chart-idle"), frame, [pick("idle_share_while_waiting", 100), pick("idle_share", 100)],
      [25, 50], "no warm worker in this window");
    let note = series.samples.toLocaleString("en-US") + " samples, " + duration(series.step_s) + " per point";
    if (series.truncated && series.points.length) note += "; only the newest are read, from " + clock(series.points[0].at);
    $("history-note").textContent = note;
  }

  function drawChart(chart, frame, lines, thresholds, emptyText) {
    const [width, height] = [560, 200];
    const pad = { left: 40, right: 12, top: 10, bottom: 24 };
    const x = (t) => pad.left + ((t - frame.since) / Math.max(frame.until - frame.since, 1)) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - Math.min(Math.max(v, 0), 100) / 100) * (height - pad.top - pad.bottom);
    const nodes = [];
    for (const v of [0, 25, 50, 75, 100]) {
      nodes.push(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
      nodes.push(svg("text", { class: "axis", x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
    }
    for (const v of thresholds) {
      nodes.push(svg("line", { class: "threshold", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
    }
    const ticks = 5;
    for (let i = 0; i <= ticks; i++) {
      const t = frame.since + ((frame.until - frame.since) * i) / ticks;
      const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
      nodes.push(svg("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": anchor }, clock(t)));
    }
    // The first series is the one that matters: drawn last, on top.
    [...lines.keys()].reverse().forEach((index) => {
      const points = lines[index];
      // A hole much longer than the usual spacing of the points (the bucket, or the tick when
      // that is longer) is drawn as a gap, not bridged by a straight line.
      const spacings = points.slice(1).map((p, i) => p[0] - points[i][0]).sort((a, b) => a - b);
      const usual = spacings.length ? spacings[Math.floor(spacings.length / 2)] : frame.step;
      const maxGap = 3 * Math.max(frame.step, usual);
      const runs = [];
      for (const point of points) {
        const run = runs[runs.length - 1];
        if (run && point[0] - run[run.length - 1][0] <= maxGap) run.push(point);
        else runs.push([point]);
      }
      for (const run of runs) {
        const title = (p) => clock(p[0]) + ": " + p[1].toFixed(1) + " %";
        if (run.length === 1) {
          const dot = svg("circle", { class: "series s" + index, cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5 });
          dot.append(svg("title", {}, title(run[0])));
          nodes.push(dot);
        } else {
          const line = svg("polyline", {
            class: "series s" + index,
            points: run.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "),
          });
          line.append(svg("title", {}, title(run[run.length - 1])));
          nodes.push(line);
        }
      }
    });
    const plotted = lines.reduce((sum, points) => sum + points.length, 0);
    chart.dataset.points = String(lines[0].length);
    if (!plotted) {
      // Between two grid lines, so no line runs through the words.
      nodes.push(svg("text", { class: "empty", x: (width + pad.left) / 2, y: y(62.5) + 4, "text-anchor": "middle" }, emptyText));
    }
    chart.replaceChildren(...nodes);
  }

  // --- start ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    takeKeyFromFragment();
    window.addEventListener("hashchange", () => {
      takeKeyFromFragment();
      useKey(sessionStorage.getItem(KEY_STORE));
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
    $("redrive").addEventListener("click", redrive);
    $("dead-close").addEventListener("click", () => selectBatch(null));
    $("dead-all").addEventListener("change", (event) => {
      for (const box of $("dead-letters").querySelectorAll("tbody input")) box.checked = event.target.checked;
      updateRedriveLabel();
    });
    $("hours").addEventListener("change", () => refreshHistory().catch(() => {}));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.key) {
        refreshBatches().catch(() => {});
      }
    });
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) useKey(key);
    else forgetKey();
  });
})();
