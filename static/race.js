// The sampler race: one seed, two samplers, both jobs streaming side by side. The server batches the two
// jobs into the same forward passes, so the race compares model evaluations, not two queues.

import { showError } from "./api.js";
import { readConditioning } from "./generate.js";
import { Job } from "./job.js";
import { FrameViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const SIDES = ["a", "b"];

export class RacePanel {
  /**
   * @param {{model: object, defaults: object}} boot the page's boot data
   * @param {(t: number|null) => void} markT the schedule marker
   */
  constructor(boot, markT) {
    this.boot = boot;
    this.viewers = Object.fromEntries(SIDES.map((s) => [s, new FrameViewer($(`race-${s}-viewer`), markT)]));
    /** @type {Job[]} */
    this.jobs = [];
    const samplers = boot.model.defaults.samplers;
    // the classic way against a few-step solver: respaced DDPM on the left, DPM-Solver++(2M) (or the server's
    // default, when that is a few-step solver) on the right
    const picks = { a: "ddpm", b: boot.defaults.sampler === "ddpm" ? "dpmpp_2m" : boot.defaults.sampler };
    for (const s of SIDES) {
      const select = $(`race-${s}-sampler`);
      select.value = picks[s];
      const fill = () => {
        const steps = $(`race-${s}-steps`);
        steps.value = samplers[select.value].steps ?? "";
        steps.disabled = samplers[select.value].steps === null; // ode_rk45 picks its own steps
      };
      fill();
      select.addEventListener("change", fill);
    }
    $("race-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.race();
    });
    $("race-cancel").addEventListener("click", () => this.jobs.forEach((j) => j.cancel()));
  }

  get running() {
    return this.jobs.some((j) => !j.ended);
  }

  sync() {
    $("race-go").disabled = this.running;
    $("race-cancel").disabled = !this.running;
  }

  body(side, seed) {
    const sampler = $(`race-${side}-sampler`).value;
    const d = this.boot.model.defaults.samplers[sampler];
    const n = Number($("race-n").value);
    // both lanes get the same labels and guidance as the Generate panel, so a guided race compares samplers only
    const steps = d.steps === null ? {} : { steps: Number($(`race-${side}-steps`).value), spacing: d.spacing };
    return { n, sampler, ...steps, seed, frame_every: 1, ...readConditioning("gen", n) };
  }

  async race() {
    if (this.running) return;
    showError($("race-error"), null);
    const seed = String(Math.floor(Math.random() * 2 ** 31));
    this.jobs = SIDES.map((s) => {
      const stats = $(`race-${s}-stats`);
      stats.textContent = "";
      return new Job(this.body(s, seed), this.viewers[s], {
        onDone: (d) => {
          const secs = d.elapsed_ms / 1000;
          stats.textContent = `NFE ${d.evaluations} · ${(d.evaluations / secs).toFixed(1)} evaluations/s · `
            + `${secs.toFixed(1)} s`;
        },
        onEnd: () => this.sync(),
        onError: (msg) => showError($("race-error"), msg),
      });
    });
    this.sync();
    const started = await Promise.allSettled(this.jobs.map((j) => j.start()));
    started.forEach((r, i) => {
      if (r.status === "rejected") {
        showError($("race-error"), r.reason.message);
        this.jobs[i].ended = true;
        this.jobs.forEach((j) => j.cancel());
      }
    });
    this.sync();
  }

  abandon() {
    this.jobs.forEach((j) => j.abandon());
  }
}
