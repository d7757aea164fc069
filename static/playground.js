// The 2D playground: POST /toy/jobs trains a point denoiser on the server while its events stream the loss and
// fresh samples; afterwards the board replays particles along the reverse SDE and the ODE from the same x_T, and
// draws the learned field (the score −ε̂/σ, or ε̂) at a t picked with the slider.

import { API, ApiError, postJson, request, showError } from "./api.js";
import { EVENTS } from "./events.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = { data: "rgba(120,120,120,0.35)", cloud: "rgba(30,90,200,0.55)", drawn: "#222",
  sde: "rgb(230,120,20)", ode: "rgb(0,140,140)", arrow: "#1e5ac8" };
const FLOW_MS = 3000; // one replay of the flows
const ADAPTIVE = "ode_rk45"; // takes no steps

/** A board of [−extent, extent]² drawn on a square canvas, y up. */
class Board {
  constructor(canvas, extent) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.extent = extent;
  }

  px([x, y]) {
    const s = this.canvas.width / (2 * this.extent);
    return [(x + this.extent) * s, (this.extent - y) * s];
  }

  /** The board point under a pointer event, or null off the board. */
  at(ev) {
    const r = this.canvas.getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * 2 * this.extent - this.extent;
    const y = this.extent - ((ev.clientY - r.top) / r.height) * 2 * this.extent;
    return Math.abs(x) <= this.extent && Math.abs(y) <= this.extent ? [x, y] : null;
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  dots(points, color, r = 1.6) {
    this.ctx.fillStyle = color;
    for (const p of points) {
      const [u, v] = this.px(p);
      this.ctx.fillRect(u - r, v - r, 2 * r, 2 * r);
    }
  }

  /** ``paths[level][particle]``, drawn up to ``upTo`` (fractional) levels as lines ``alpha`` opaque and
   * ``width`` wide, with a dot at each head. */
  trails(paths, upTo, color, alpha, width) {
    const last = Math.min(paths.length - 1, Math.floor(upTo));
    const ctx = this.ctx;
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.globalAlpha = alpha;
    for (let i = 0; i < paths[0].length; i++) {
      ctx.beginPath();
      for (let k = 0; k <= last; k++) {
        const [u, v] = this.px(paths[k][i]);
        if (k === 0) ctx.moveTo(u, v); else ctx.lineTo(u, v);
      }
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    this.dots(paths[last], color, 2.4);
  }

  /** Arrows of ``vectors[row][col]`` on the grid spanning the board, the longest a grid cell long. */
  arrows(vectors) {
    const k = vectors.length;
    const cell = (2 * this.extent) / (k - 1);
    const longest = Math.max(1e-12, ...vectors.flat().map(([a, b]) => Math.hypot(a, b)));
    const ctx = this.ctx;
    ctx.strokeStyle = COLORS.arrow;
    ctx.lineWidth = 1.2;
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) {
        const [a, b] = vectors[i][j];
        const from = [-this.extent + j * cell, -this.extent + i * cell];
        const to = [from[0] + (a / longest) * cell * 0.9, from[1] + (b / longest) * cell * 0.9];
        const [u0, v0] = this.px(from);
        const [u1, v1] = this.px(to);
        const ang = Math.atan2(v1 - v0, u1 - u0);
        ctx.beginPath();
        ctx.moveTo(u0, v0);
        ctx.lineTo(u1, v1);
        ctx.lineTo(u1 - 4 * Math.cos(ang - 0.5), v1 - 4 * Math.sin(ang - 0.5));
        ctx.moveTo(u1, v1);
        ctx.lineTo(u1 - 4 * Math.cos(ang + 0.5), v1 - 4 * Math.sin(ang + 0.5));
        ctx.stroke();
      }
    }
  }
}

/** The loss against training steps as an SVG polyline, its range written at the axis. */
function drawLoss(svg, losses) {
  const W = 420;
  const H = 200;
  const M = { l: 46, r: 10, t: 10, b: 28 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const el = (name, attrs, text) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
  };
  el("line", { class: "axis", x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b });
  el("line", { class: "axis", x1: M.l, y1: M.t, x2: M.l, y2: H - M.b });
  el("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }, "training step");
  if (!losses.length) return;
  const steps = losses.map((p) => p[0]);
  const ys = losses.map((p) => p[1]);
  const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
  const smax = Math.max(1, ...steps);
  const x = (s) => M.l + (s / smax) * (W - M.l - M.r);
  const y = (v) => M.t + (hi === lo ? 0.5 : (hi - v) / (hi - lo)) * (H - M.t - M.b);
  el("polyline", { class: "curve", points: losses.map(([s, v]) => `${x(s)},${y(v)}`).join(" ") });
  el("text", { x: M.l - 4, y: M.t + 10, "text-anchor": "end" }, hi.toFixed(2));
  el("text", { x: M.l - 4, y: H - M.b, "text-anchor": "end" }, lo.toFixed(2));
  el("text", { x: W - M.r, y: M.t + 10, "text-anchor": "end" }, `${smax} steps, loss ${ys[ys.length - 1].toFixed(3)}`);
}

/**
 * @param {{defaults: {toy: {datasets: string[], board: number, max_points: number}}}} boot the page's boot data
 * @returns {() => void} what to call when the page goes away
 */
export function initPlayground(boot) {
  const cfg = boot.defaults.toy;
  const board = new Board($("toy-board"), cfg.board);
  const panel = $("toy");
  let drawn = []; // the visitor's points
  let data = [];
  let cloud = [];
  let losses = [];
  let done = null; // the toy_done payload
  let job = null; // {id, source}
  let anim = null;

  const status = (text) => { $("toy-status").textContent = text; };
  const drawing = () => $("toy-dataset").value === "draw";

  function render(upTo = null) {
    board.clear();
    const view = done ? $("toy-view").value : "samples";
    board.dots(drawing() && !data.length ? drawn : data, drawing() && !data.length ? COLORS.drawn : COLORS.data);
    if (view === "samples") board.dots(done ? done.points : cloud, COLORS.cloud);
    if (view === "flows") {
      const level = upTo === null ? done.sde.length - 1 : upTo;
      board.trails(done.sde, level, COLORS.sde, 0.22, 0.7); // the SDE's trails zigzag and cross: faint
      board.trails(done.ode, level, COLORS.ode, 0.9, 1.4);
    }
    if (view === "field") {
      const i = Number($("toy-t").value);
      const sigma = done.field_sigma[i];
      const eps = $("toy-eps").checked;
      board.arrows(done.field[i].map((row) => row.map(([a, b]) => (eps ? [a, b] : [-a / sigma, -b / sigma]))));
    }
    panel.dataset.view = view;
  }

  function replay() {
    cancelAnimationFrame(anim);
    panel.dataset.flowed = "false";
    const t0 = performance.now();
    const levels = done.sde.length - 1;
    const frame = (now) => {
      const f = Math.min(1, Math.max(0, (now - t0) / FLOW_MS)); // a frame's time may precede t0
      render(f * levels);
      if (f < 1) anim = requestAnimationFrame(frame); else panel.dataset.flowed = "true";
    };
    anim = requestAnimationFrame(frame);
  }

  function showT() {
    const i = Number($("toy-t").value);
    $("toy-t-out").textContent = done ? `t = ${done.field_t[i]} (σ = ${done.field_sigma[i].toFixed(3)})` : "";
  }

  function setView() {
    const view = $("toy-view").value;
    $("toy-t-label").hidden = view !== "field";
    $("toy-eps").parentElement.hidden = view !== "field";
    $("toy-replay").hidden = view !== "flows";
    cancelAnimationFrame(anim);
    if (view === "flows") replay(); else render();
  }

  function busy(on) {
    $("toy-go").disabled = on;
    $("toy-dataset").disabled = on;
    $("toy-cancel").disabled = true; // until the server names the job
    panel.dataset.state = on ? "running" : "idle";
  }

  /** Forget the last run's data, samples and results (a new drawing, dataset or run). */
  function forget() {
    data = []; cloud = []; done = null;
    cancelAnimationFrame(anim);
    $("toy-after").hidden = true;
  }

  function end(state, message = null) {
    if (job) job.source.close();
    job = null;
    busy(false);
    panel.dataset.state = state;
    if (message) showError($("toy-error"), message);
  }

  async function train(ev) {
    ev.preventDefault();
    showError($("toy-error"), null);
    const sampler = $("toy-sampler").value;
    const body = { seconds: $("toy-seconds").value === "" ? null : Number($("toy-seconds").value),
      seed: $("toy-seed").value.trim(), sampler };
    if (sampler !== ADAPTIVE) body.steps = Number($("toy-steps").value); // the adaptive ODE picks its own
    if (drawing()) body.points = drawn.map(([x, y]) => [Number(x.toFixed(3)), Number(y.toFixed(3))]);
    else body.dataset = $("toy-dataset").value;
    forget();
    losses = [];
    $("toy-bar").value = 0;
    drawLoss($("toy-loss"), losses);
    render();
    busy(true);
    status("submitting…");
    let created;
    try {
      created = await postJson("/toy/jobs", body);
    } catch (e) {
      end("idle", e instanceof ApiError ? e.message : String(e));
      status("idle");
      return;
    }
    const t0 = performance.now();
    $("toy-cancel").disabled = false;
    const source = new EventSource(`${API}/jobs/${encodeURIComponent(created.id)}/events`);
    job = { id: created.id, source };
    panel.dataset.jobId = created.id;
    const on = (name, fn) => source.addEventListener(name, (e) => {
      if (job && job.source === source && typeof e.data === "string") fn(JSON.parse(e.data));
    });
    on(EVENTS.QUEUED, (d) => status(d.position ? `queued, position ${d.position}` : "starting…"));
    on(EVENTS.TOY_STARTED, (d) => { data = d.data; render(); status("training…"); });
    on(EVENTS.TOY_PROGRESS, (d) => {
      cloud = d.points;
      losses.push([d.step, d.loss]);
      const share = Math.min(1, d.seconds / body.seconds);
      const wall = (performance.now() - t0) / 1000;
      const eta = share > 0 ? Math.max(0, wall / share - wall) : null;
      $("toy-bar").value = share;
      status(`training: step ${d.step}, loss ${d.loss.toFixed(3)}, ${d.seconds.toFixed(1)} / ${body.seconds} s`
        + (eta === null ? "" : ` (ETA ${eta.toFixed(0)} s)`));
      panel.dataset.progress = String(losses.length);
      drawLoss($("toy-loss"), losses);
      render();
    });
    on(EVENTS.TOY_DONE, (d) => {
      done = d;
      losses = d.losses;
      drawLoss($("toy-loss"), losses);
      $("toy-bar").value = 1;
      $("toy-t").max = String(d.field_t.length - 1);
      $("toy-t").value = String(Math.floor(d.field_t.length / 2));
      showT();
      $("toy-after").hidden = false;
      status(`done: ${d.steps} steps in ${d.seconds.toFixed(1)} s of training (${(d.elapsed_ms / 1000).toFixed(1)} s `
        + `wall); ${d.points.length} samples`);
      end("done");
      setView();
    });
    on(EVENTS.CANCELLED, (d) => { status(`cancelled after ${d.step} steps`); end("cancelled"); });
    on(EVENTS.ERROR, (d) => { status("failed"); end("error", `Training failed: ${d.message}`); });
    source.onerror = () => {
      if (job && source.readyState === EventSource.CLOSED) { status("lost the stream"); end("error"); }
    };
  }

  async function cancel() {
    if (!job) return;
    status("cancelling…");
    try {
      await request(`/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    } catch (e) {
      showError($("toy-error"), e.message);
    }
  }

  let last = null;
  const addPoint = (ev) => {
    if (!drawing() || job || drawn.length >= cfg.max_points) return;
    const p = board.at(ev);
    if (!p || (last && Math.hypot(p[0] - last[0], p[1] - last[1]) < 0.05)) return;
    if (data.length) forget(); // drawing again: the board shows the new drawing, not the last run
    drawn.push(p);
    last = p;
    status(`${drawn.length} points drawn (at most ${cfg.max_points})`);
    render();
  };
  board.canvas.addEventListener("pointerdown", (ev) => { last = null; addPoint(ev); });
  board.canvas.addEventListener("pointermove", (ev) => { if (ev.buttons) addPoint(ev); });
  $("toy-dataset").addEventListener("change", () => {
    $("toy-clear").hidden = !drawing();
    board.canvas.classList.toggle("drawing", drawing());
    forget();
    status(drawing() ? "draw points on the board (click or drag), then Train" : "idle");
    render();
  });
  $("toy-clear").addEventListener("click", () => { drawn = []; forget(); render(); });
  $("toy-form").addEventListener("submit", train);
  $("toy-sampler").addEventListener("change", () => { $("toy-steps").disabled = $("toy-sampler").value === ADAPTIVE; });
  $("toy-cancel").addEventListener("click", cancel);
  $("toy-view").addEventListener("change", setView);
  $("toy-t").addEventListener("input", () => { showT(); render(); });
  $("toy-eps").addEventListener("change", () => render());
  $("toy-replay").addEventListener("click", replay);
  drawLoss($("toy-loss"), losses);
  render();
  return () => {
    if (job) {
      // the server also cancels a job nobody reads, but tell it now
      fetch(`${API}/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE", keepalive: true });
      job.source.close();
    }
  };
}
