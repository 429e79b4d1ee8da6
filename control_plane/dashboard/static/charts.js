// Line charts drawn as inline SVG (no library), in the units of each <svg>'s viewBox: a time axis, a value axis (0–100 % or counts
// rounded up to a readable top), dashed thresholds, and one polyline per run of points.

import { clock, isNum, svg } from "./dom.js";

const PAD = { left: 46, right: 12, top: 10, bottom: 24 };

// A top for the value axis and the spacing of its lines: 1, 2, 2.5 or 5 times a power of ten,
// at most four lines (whole numbers for counts).
function valueAxis(highest, whole) {
  if (!(highest > 0)) return { top: 1, step: whole ? 1 : 0.25 };
  const raw = highest / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  if (whole) step = Math.max(1, Math.ceil(step));
  return { top: step * Math.max(1, Math.ceil(highest / step - 1e-9)), step };
}

// One run per stretch of points without a hole much longer than their usual spacing (the
// bucket, or the tick when that is longer): a hole is a gap, not a straight line.
function runsOf(points, step) {
  if (!step) return points.length ? [points] : [];
  const spacings = points.slice(1).map((p, i) => p[0] - points[i][0]).sort((a, b) => a - b);
  const usual = spacings.length ? spacings[Math.floor(spacings.length / 2)] : step;
  const maxGap = 3 * Math.max(step, usual);
  const runs = [];
  for (const point of points) {
    const run = runs[runs.length - 1];
    if (run && point[0] - run[run.length - 1][0] <= maxGap) run.push(point);
    else runs.push([point]);
  }
  return runs;
}

// options: since, until (Unix seconds); lines: [{ points: [[t, value]], cls }], the first drawn
// on top; percent (0–100 axis) or whole (counts); thresholds: dashed values; step: the points'
// bucket in seconds (0: never a gap); format: value → text; empty: what an empty chart says.
export function drawChart(chart, options) {
  const { since, until, lines, thresholds = [], step = 0, format = String } = options;
  const { width: WIDTH, height: HEIGHT } = chart.viewBox.baseVal; // the chart's own units
  const values = lines.flatMap((line) => line.points.map((p) => p[1])).filter(isNum);
  const axis = options.percent
    ? { top: 100, step: 25 }
    : valueAxis(Math.max(0, options.highest || 0, ...values), options.whole);
  const x = (t) => PAD.left + ((t - since) / Math.max(until - since, 1)) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - Math.min(Math.max(v, 0), axis.top) / axis.top) * (HEIGHT - PAD.top - PAD.bottom);
  const nodes = [];
  for (let v = 0; v <= axis.top + 1e-9; v += axis.step) {
    nodes.push(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }));
    const label = options.percent ? String(v) : Number(v.toPrecision(6)).toLocaleString("en-US");
    nodes.push(svg("text", { class: "axis", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, label));
  }
  for (const v of thresholds) {
    nodes.push(svg("line", { class: "threshold", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }));
  }
  const ticks = 5;
  const seconds = until - since < 900;
  for (let i = 0; i <= ticks; i++) {
    const t = since + ((until - since) * i) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    nodes.push(svg("text", { class: "axis", x: x(t), y: HEIGHT - 6, "text-anchor": anchor }, clock(t, seconds)));
  }
  [...lines.keys()].reverse().forEach((index) => {
    const { points, cls } = lines[index];
    const title = (p) => clock(p[0], true) + ": " + format(p[1]);
    for (const run of runsOf(points, step)) {
      if (run.length === 1) {
        const dot = svg("circle", { class: "series " + cls, cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5 });
        dot.append(svg("title", {}, title(run[0])));
        nodes.push(dot);
      } else {
        const line = svg("polyline", {
          class: "series " + cls,
          points: run.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "),
        });
        line.append(svg("title", {}, title(run[run.length - 1])));
        nodes.push(line);
      }
    }
  });
  chart.dataset.points = String(lines.length ? lines[0].points.length : 0);
  if (!values.length && options.empty) {
    // Between two grid lines, so no line runs through the words.
    nodes.push(svg("text", { class: "empty", x: (WIDTH + PAD.left) / 2, y: y(axis.top * 0.625) + 4, "text-anchor": "middle" }, options.empty));
  }
  chart.replaceChildren(...nodes);
}
