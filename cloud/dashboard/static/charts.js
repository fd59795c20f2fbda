// wearfed dashboard: small SVG line charts drawn in the browser (no library, no network).
// WFCharts.line(container, {series: [{name, points: [[x, y], ...]}], hlines: [{y, label}], xLabel, yLabel,
//                           xFormat, yFormat}) replaces the container's content with one <svg>.
"use strict";

const WFCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626",
                   "#4b5563", "#ca8a04"];
  const W = 640, H = 260, M = {top: 14, right: 16, bottom: 42, left: 56};

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // "nice" tick values covering [lo, hi] (Heckbert's labelling, Graphics Gems 1990)
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(12));
    return out;
  }

  function fmt(v) {
    if (!Number.isFinite(v)) return "";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }

  function line(container, opts) {
    const series = (opts.series || []).filter((s) => s.points && s.points.length);
    container.textContent = "";
    if (!series.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = opts.empty || "nothing to plot yet";
      container.appendChild(p);
      return null;
    }
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat((opts.hlines || []).map((h) => h.y));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y1 = y0 + 1; }
    y1 += (y1 - y0) * 0.08;
    const sx = (x) => M.left + (x - x0) / (x1 - x0) * (W - M.left - M.right);
    const sy = (y) => H - M.bottom - (y - y0) / (y1 - y0) * (H - M.top - M.bottom);
    const xf = opts.xFormat || fmt, yf = opts.yFormat || fmt;
    const svg = node("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                             "aria-label": opts.title || opts.yLabel || "chart"});
    const axes = node("g", {class: "axes"});
    for (const t of ticks(y0, y1, 5)) {
      axes.appendChild(node("line", {x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), class: "grid"}));
      axes.appendChild(node("text", {x: M.left - 6, y: sy(t) + 4, "text-anchor": "end"}, yf(t)));
    }
    const xt = opts.xTicks ? opts.xTicks(x0, x1) : ticks(x0, x1, 6);
    for (const t of xt) {
      if (t < x0 || t > x1) continue;
      axes.appendChild(node("line", {x1: sx(t), x2: sx(t), y1: H - M.bottom, y2: H - M.bottom + 4, class: "tick"}));
      axes.appendChild(node("text", {x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle"}, xf(t)));
    }
    axes.appendChild(node("line", {x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis"}));
    axes.appendChild(node("line", {x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis"}));
    if (opts.xLabel) axes.appendChild(node("text", {x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle",
                                                    class: "label"}, opts.xLabel));
    if (opts.yLabel) axes.appendChild(node("text", {x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
                                                    class: "label",
                                                    transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`},
                                           opts.yLabel));
    svg.appendChild(axes);
    for (const h of opts.hlines || []) {
      const g = node("g", {class: "hline"});
      g.appendChild(node("line", {x1: M.left, x2: W - M.right, y1: sy(h.y), y2: sy(h.y)}));
      g.appendChild(node("text", {x: W - M.right - 4, y: sy(h.y) - 4, "text-anchor": "end"}, h.label || fmt(h.y)));
      svg.appendChild(g);
    }
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      const g = node("g", {class: "series", "data-series": s.name});
      const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
      const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      g.appendChild(node("path", {d, stroke: color, fill: "none", "stroke-width": 2,
                                  "stroke-dasharray": s.dashed ? "6 4" : "none"}));
      for (const p of pts) {
        const c = node("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 3.2, fill: p[2] ? "#dc2626" : color});
        c.appendChild(node("title", {}, `${s.name}: ${yf(p[1])} at ${xf(p[0])}`));
        g.appendChild(c);
      }
      svg.appendChild(g);
    });
    container.appendChild(svg);
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = s.color || PALETTE[i % PALETTE.length];
      if (s.dashed) sw.className = "dashed";
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    container.appendChild(legend);
    return svg;
  }

  return {line, ticks, fmt};
})();
