// One sampling job from start to end: POST /jobs, then its SSE stream through EventSource.
// We POST first (rather than GET /stream) so a bad request comes back as a readable 422/429 and the page
// knows the job id, which Cancel needs.

import { API, postJson, request, showError } from "./api.js";

export class Job {
  /**
   * @param {object} body the JobRequest fields (n, steps, sampler, eta, seed, frame_every, init)
   * @param {import("./viewer.js").FrameViewer} viewer
   * @param {{onEnd?: (state: string) => void, onError?: (msg: string|null) => void}} hooks
   */
  constructor(body, viewer, hooks = {}) {
    this.body = body;
    this.viewer = viewer;
    this.onEnd = hooks.onEnd || (() => {});
    this.onError = hooks.onError || (() => {});
    this.id = null;
    this.source = null;
    this.ended = false; // we stopped listening
    this.settled = false; // the server told us how the job ended
  }

  /** Throws ApiError when the server refuses the job (422, 429, …); the stream's own failures go to onError. */
  async start() {
    this.viewer.reset();
    this.viewer.setStatus("submitting…");
    const created = await postJson("/jobs", this.body);
    this.id = created.id;
    this.viewer.root.dataset.jobId = created.id;
    this.viewer.queued(created.position);
    const es = new EventSource(`${API}/jobs/${encodeURIComponent(created.id)}/events`);
    this.source = es;
    // EventSource's own connection errors are also called "error" but carry no data: skip those here
    const on = (name, fn) => es.addEventListener(name, (ev) => {
      if (!this.ended && typeof ev.data === "string") fn(JSON.parse(ev.data));
    });
    on("queued", (d) => this.viewer.queued(d.position));
    on("started", (d) => this.viewer.started(d.steps));
    on("frame", (d) => this.viewer.frame(d));
    on("done", (d) => { this.settled = true; this.viewer.done(d); this.end("done"); });
    on("cancelled", (d) => { this.settled = true; this.viewer.cancelled(d.step); this.end("cancelled"); });
    on("error", (d) => {
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
 * Start ``job``; a refusal (422, 429, …) is shown in ``errEl`` and on the viewer, and ``busy(false)`` frees the form.
 * @param {Job} job
 * @param {HTMLElement} errEl
 * @param {(on: boolean) => void} busy
 */
export async function startJob(job, errEl, busy) {
  try {
    await job.start();
  } catch (e) {
    showError(errEl, e.message);
    job.viewer.failed(e.message);
    job.ended = true;
    busy(false);
  }
}

/**
 * Make ``button`` cancel whichever job ``current()`` returns; a failed DELETE is shown in ``errEl``.
 * @param {HTMLButtonElement} button
 * @param {() => Job|null} current
 * @param {HTMLElement} errEl
 */
export function wireCancel(button, current, errEl) {
  button.addEventListener("click", async () => {
    const job = current();
    if (!job) return;
    button.disabled = true;
    try {
      await job.cancel();
    } catch (e) {
      showError(errEl, e.message);
    }
  });
}
