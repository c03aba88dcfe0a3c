/* A tiny SVG chart helper (line over time, grouped bars); text goes in via textContent only. */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#4f46e5", "#16a34a", "#f97316", "#dc2626", "#0891b2", "#a21caf", "#ca8a04", "#64748b"];
  const W = 600;
  const H = 220;
  const M = { left: 52, right: 12, top: 10, bottom: 26 };

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) n.setAttribute(name, String(value));
    if (text !== undefined) n.textContent = String(text);
    return n;
  }

  /** The smallest top >= value whose quarter is a round step (1, 2, 2.5 or 5 × 10^n);
   *  for counts (`integer`) the step is a whole number. */
  function niceMax(value, integer) {
    if (!(value > 0)) return integer ? 4 : 1;
    const quarter = integer ? Math.max(value / 4, 1) : value / 4;
    const power = Math.pow(10, Math.floor(Math.log10(quarter)));
    const steps = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    for (const step of steps) if (quarter <= step * power) return 4 * step * power;
    return 40 * power;
  }

  function frame(yMax, yFormat) {
    const root = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const plotH = H - M.top - M.bottom;
    for (let i = 0; i <= 4; i += 1) {
      const y = M.top + plotH - (plotH * i) / 4;
      root.append(node("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y, y2: y }));
      root.append(node("text", { class: "tick", x: M.left - 6, y: y + 3, "text-anchor": "end" }, yFormat((yMax * i) / 4)));
    }
    root.append(node("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
    return root;
  }

  function legend(series) {
    const box = document.createElement("div");
    box.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color || PALETTE[i % PALETTE.length];
      item.append(swatch, document.createTextNode(s.name));
      box.append(item);
    });
    return box;
  }

  function empty(container) {
    const note = document.createElement("div");
    note.className = "nodata";
    note.textContent = "no data in this range";
    container.append(note);
  }

  function timeLabel(ms, span) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return span <= 36 * 3600e3 ? hm : `${pad(d.getMonth() + 1)}-${pad(d.getDate())}${span <= 8 * 86400e3 ? " " + hm : ""}`;
  }

  /** Lines over time. series: [{name, points: [[isoOrMs, value|null], …]}]. */
  function line(container, { series, yFormat = String, xDomain, yMax, integer }) {
    const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
    if (!all.length) return empty(container);
    const xs = all.map((p) => +new Date(p[0]));
    const x0 = Math.min(xDomain ? +new Date(xDomain[0]) : Infinity, ...xs);
    const x1 = Math.max(xDomain ? +new Date(xDomain[1]) : Math.max(...xs), x0 + 1);
    const top = yMax ?? niceMax(Math.max(...all.map((p) => p[1])), integer);
    const plotW = W - M.left - M.right;
    const plotH = H - M.top - M.bottom;
    const sx = (t) => M.left + ((+new Date(t) - x0) / (x1 - x0)) * plotW;
    const sy = (v) => M.top + plotH - (Math.min(v, top) / top) * plotH;
    const root = frame(top, yFormat);
    for (let i = 0; i <= 4; i += 1) {
      const t = x0 + ((x1 - x0) * i) / 4;
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      root.append(node("text", { class: "tick", x: sx(t), y: H - 8, "text-anchor": anchor }, timeLabel(t, x1 - x0)));
    }
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      let d = "";
      let pen = "M";
      for (const [t, v] of s.points) {
        if (v === null || v === undefined) {
          pen = "M";
          continue;
        }
        d += `${pen}${sx(t).toFixed(1)},${sy(v).toFixed(1)} `;
        pen = "L";
      }
      if (d) root.append(node("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
      for (const [t, v] of s.points) {
        if (v === null || v === undefined) continue;
        const dot = node("circle", { cx: sx(t), cy: sy(v), r: 2.5, fill: color });
        dot.append(node("title", {}, `${s.name} · ${new Date(t).toLocaleString()} · ${yFormat(v)}`));
        root.append(dot);
      }
    });
    container.append(root, legend(series));
  }

  /** Grouped bars per label. series: [{name, values: [number|null per label]}]. */
  function bars(container, { labels, series, yFormat = String, integer }) {
    const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
    if (!labels.length || !values.length) return empty(container);
    const top = niceMax(Math.max(...values), integer);
    const plotW = W - M.left - M.right;
    const plotH = H - M.top - M.bottom;
    const group = plotW / labels.length;
    const barW = Math.min(48, Math.max(2, (group * 0.8) / series.length));
    const root = frame(top, yFormat);
    labels.forEach((label, li) => {
      const gx = M.left + group * li + (group - barW * series.length) / 2;
      series.forEach((s, si) => {
        const v = s.values[li];
        if (v === null || v === undefined) return;
        const h = (Math.min(v, top) / top) * plotH;
        const rect = node("rect", {
          x: gx + barW * si,
          y: M.top + plotH - h,
          width: barW - 1,
          height: Math.max(h, 0.5),
          fill: s.color || PALETTE[si % PALETTE.length],
        });
        rect.append(node("title", {}, `${label} · ${s.name}: ${yFormat(v)}`));
        root.append(rect);
      });
      const text = label.length > 18 ? label.slice(0, 17) + "…" : label;
      root.append(node("text", { class: "tick", x: M.left + group * (li + 0.5), y: H - 8, "text-anchor": "middle" }, text));
    });
    container.append(root, legend(series));
  }

  return { line, bars, PALETTE };
})();
