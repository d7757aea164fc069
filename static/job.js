// One sampling job from start to end: POST /jobs, then its SSE stream through EventSource.
// We POST first (rather than GET /stream) so a bad request comes back as a readable 422/429 and the page
// knows the job id, which Cancel needs.

import { API, postJson, request, showError } from "./api.js";
import { EVENTS, FRAME_FORMAT } from "./events.js";

export class Job {
  /**
   * @param {object} body the JobRequest fields (n, steps, sampler, eta, seed, frame_every, init)
   * @param {import("./viewer.js").FrameViewer} viewer
   * @param {{onEnd?: (state: string) => void, onError?: (msg: string|null) => void,
   *   onDone?: (d: object) => void}} hooks ``onDone`` gets the ``done`` event's payload
   * @param {string} route the route that makes the job: /jobs, or /interpolate for a strip
   */
  constructor(body, viewer, hooks = {}, route = "/jobs") {
    this.body = { ...body, frame_format: FRAME_FORMAT };
    this.route = route;
    this.viewer = viewer;
    this.onEnd = hooks.onEnd || (() => {});
    this.onError = hooks.onError || (() => {});
    this.onDone = hooks.onDone || (() => {});
    this.id = null;
    this.source = null;
    this.ended = false; // we stopped listening
    this.settled = false; // the server told us how the job ended
  }

  /** Throws ApiError when the server refuses the job (422, 429, …); the stream's own failures go to onError. */
  async start() {
    this.viewer.reset();
    this.viewer.setStatus("submitting…");
    const created = await postJson(this.route, this.body);
    this.id = created.id;
    this.viewer.root.dataset.jobId = created.id;
    this.viewer.queued(created.position);
    const es = new EventSource(`${API}/jobs/${encodeURIComponent(created.id)}/events`);
    this.source = es;
    // EventSource's own connection errors are also called "error" but carry no data: skip those here
    const on = (name, fn) => es.addEventListener(name, (ev) => {
      if (!this.ended && typeof ev.data === "string") fn(JSON.parse(ev.data));
    });
    on(EVENTS.QUEUED, (d) => this.viewer.queued(d.position));
    on(EVENTS.STARTED, (d) => this.viewer.started(d.steps, d.labels));
    on(EVENTS.FRAME, (d) => this.viewer.frame(d));
    on(EVENTS.DONE, (d) => { this.settled = true; this.viewer.done(d); this.onDone(d); this.end("done"); });
    on(EVENTS.CANCELLED, (d) => { this.settled = true; this.viewer.cancelled(d.step); this.end("cancelled"); });
    on(EVENTS.ERROR, (d) => {
      this.settled = true;
      this.viewer.failed(d.message);
      this.onError(`Sampling failed: ${d.message}`);
      this.end("error");
    });
    es.onerror = () => {
      if (this.ended) return;
      if (es.readyState === EventSource.CLOSED) {
        this.viewer.failed("lost the stream");
        this.onError("Lost the connection to the event stream.");
        this.end("error");
      } else {
        // EventSource reconnects by itself and sends Last-Event-ID, which the server replays from
        this.viewer.setStatus("connection lost, reconnecting…");
      }
    };
    return created;
  }

  end(state) {
    if (this.ended) return;
    this.ended = true;
    if (this.source) this.source.close();
    this.onEnd(state);
  }

  /** Ask the server to stop this job; the stream then delivers `cancelled`, which ends us. */
  async cancel() {
    if (!this.id || this.ended) return;
    this.viewer.setStatus("cancelling…");
    const state = await request(`/jobs/${encodeURIComponent(this.id)}`, { method: "DELETE" });
    // the job may have finished before the DELETE landed; its stream still tells us how it ended
    return state;
  }

  /**
   * Best-effort cancel that survives the page being closed. Checks `settled`, not `ended`: navigating away
   * aborts the EventSource first, which ends the job locally while the server is still sampling.
   */
  abandon() {
    if (!this.id || this.settled) return;
    fetch(`${API}/jobs/${encodeURIComponent(this.id)}`, { method: "DELETE", keepalive: true }).catch(() => {});
    if (this.source) this.source.close();
  }
}

/**
 * One panel's jobs: its Go and Cancel buttons, its error line and its viewer. Runs one job at a time, keeps
 * the buttons in step with it, and cancels it when the page goes away.
 */
export class JobRunner {
  /**
   * @param {{go: HTMLButtonElement, cancel: HTMLButtonElement, err: HTMLElement,
   *   viewer: import("./viewer.js").FrameViewer, canStart?: () => boolean}} parts
   *   ``canStart`` says whether the panel has what a job needs (Go stays disabled otherwise)
   */
  constructor({ go, cancel, err, viewer, canStart = () => true }) {
    Object.assign(this, { go, cancel, err, viewer, canStart });
    /** @type {Job|null} */
    this.job = null;
    cancel.addEventListener("click", () => this.cancelJob());
  }

  get running() {
    return !!(this.job && !this.job.ended);
  }

  /** Enable Go and Cancel for the current state. */
  sync() {
    this.go.disabled = this.running || !this.canStart();
    this.cancel.disabled = !this.running;
  }

  /**
   * Start a job for ``body``; a refusal (422, 429, …) is shown on the error line and on the viewer.
   * @param {object} body the JobRequest fields
   * @param {(state: string) => void} onEnd told how the job ended
   * @param {string} route the route that makes the job (see Job)
   */
  async run(body, onEnd = () => {}, route = "/jobs") {
    if (this.running) return;
    showError(this.err, null);
    this.job = new Job(body, this.viewer, {
      onEnd: (state) => {
        this.sync();
        onEnd(state);
      },
      onError: (msg) => showError(this.err, msg),
    }, route);
    this.sync();
    try {
      await this.job.start();
    } catch (e) {
      showError(this.err, e.message);
      this.viewer.failed(e.message);
      this.job.ended = true;
      this.sync();
    }
  }

  async cancelJob() {
    if (!this.job) return;
    this.cancel.disabled = true;
    try {
      await this.job.cancel();
    } catch (e) {
      showError(this.err, e.message);
    }
  }

  /** Best-effort cancel when the page goes away. */
  abandon() {
    if (this.job) this.job.abandon();
  }
}
