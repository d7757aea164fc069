// Line plots as SVG, with a movable vertical marker for the t being sampled.

const SVG = "http://www.w3.org/2000/svg";
const W = 420;
const H = 240;
const M = { l: 46, r: 10, t: 10, b: 34 };
const MAX_POINTS = 400; // a path per curve; more points than pixels only costs time

function el(name, attrs = {}, text = null) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== null) e.textContent = text;
  return e;
}

const fmtPow = (p) => (p === 0 ? "1" : `1e${p}`);

/**
 * @param {SVGSVGElement} svg
 * @param {{label: string, ys: number[], cls: string}[]} series all of the same length T (x = t = 0..T-1)
 * @param {{log?: boolean}} opts log: a log10 y axis (values ≤ 0 are clamped to the axis floor)
 * @returns {(t: number|null) => void} moves the marker to t, or hides it for null
 */
export function linePlot(svg, series, opts = {}) {
  const log = !!opts.log;
  const T = series[0].ys.length;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const pw = W - M.l - M.r;
  const ph = H - M.t - M.b;

  let lo = 0;
  let hi = 1;
  if (log) {
    const pos = series.flatMap((s) => s.ys.filter((y) => y > 0 && Number.isFinite(y)));
    // cosine's last SNR is ~1e-9 or below; a floor keeps the interesting range readable
    lo = Math.max(Math.floor(Math.log10(Math.min(...pos))), -10);
    hi = Math.ceil(Math.log10(Math.max(...pos)));
    if (hi <= lo) hi = lo + 1;
  }
  const xOf = (t) => M.l + (pw * t) / Math.max(T - 1, 1);
  const yOf = (y) => {
    const v = log ? Math.log10(Math.max(y, 10 ** lo)) : y;
    return M.t + ph * (1 - (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo));
  };

  const axes = el("g", { class: "axes" });
  axes.append(el("rect", { x: M.l, y: M.t, width: pw, height: ph, class: "frame" }));
  const yTicks = log
    ? Array.from({ length: hi - lo + 1 }, (_, i) => lo + i).filter((p, _, a) => a.length <= 7 || p % 2 === 0)
    : [0, 0.25, 0.5, 0.75, 1];
  for (const v of yTicks) {
    const y = yOf(log ? 10 ** v : v);
    axes.append(el("line", { x1: M.l, x2: M.l + pw, y1: y, y2: y, class: "grid" }));
    axes.append(el("text", { x: M.l - 4, y: y + 4, "text-anchor": "end" }, log ? fmtPow(v) : String(v)));
  }
  for (const t of [0, Math.round((T - 1) / 2), T - 1]) {
    axes.append(el("text", { x: xOf(t), y: M.t + ph + 14, "text-anchor": "middle" }, String(t)));
  }
  axes.append(el("text", { x: M.l + pw / 2, y: H - 3, "text-anchor": "middle", class: "axis-label" }, "t"));
  svg.append(axes);

  const stride = Math.max(1, Math.ceil(T / MAX_POINTS));
  const legend = el("g", { class: "legend" });
  series.forEach((s, i) => {
    let d = "";
    for (let t = 0; t < T; t += stride) d += `${d ? "L" : "M"}${xOf(t).toFixed(1)},${yOf(s.ys[t]).toFixed(1)}`;
    d += `L${xOf(T - 1).toFixed(1)},${yOf(s.ys[T - 1]).toFixed(1)}`;
    const path = el("path", { d, class: `curve ${s.cls}` });
    path.append(el("title", {}, s.label));
    svg.append(path);
    const ly = M.t + 14 + 15 * i;
    const lx = M.l + pw - 130; // both plots fall from left to right, so the top right is free
    legend.append(el("line", { x1: lx, x2: lx + 18, y1: ly - 4, y2: ly - 4, class: `curve ${s.cls}` }));
    legend.append(el("text", { x: lx + 22, y: ly }, s.label));
  });
  svg.append(legend);

  const marker = el("line", { y1: M.t, y2: M.t + ph, class: "marker", visibility: "hidden" });
  const markerLabel = el("text", { y: M.t + ph - 4, class: "marker-label", visibility: "hidden" });
  svg.append(marker, markerLabel);
  return (t) => {
    const vis = t === null || t === undefined ? "hidden" : "visible";
    marker.setAttribute("visibility", vis);
    markerLabel.setAttribute("visibility", vis);
    if (vis === "hidden") return;
    const x = xOf(t).toFixed(1);
    marker.setAttribute("x1", x);
    marker.setAttribute("x2", x);
    markerLabel.setAttribute("x", String(Number(x) + (t > T / 2 ? -4 : 4)));
    markerLabel.setAttribute("text-anchor", t > T / 2 ? "end" : "start");
    markerLabel.textContent = `t = ${t}`;
    svg.dataset.markerT = String(t);
  };
}
