// Noise your own image: upload or pick a sample → q(x_t | x0) at the slider's t → "Denoise from here".

import { request, showError } from "./api.js";
import { readConditioning } from "./generate.js";
import { INVERTED } from "./interpolate.js";
import { JobRunner } from "./job.js";
import { FrameViewer } from "./viewer.js";
import { dataUrlBytes } from "./zip.js";

const $ = (id) => document.getElementById(id);

export class NoisePanel {
  /**
   * @param {{model: object}} boot
   * @param {(t: number|null) => void} markT the schedule marker
   */
  constructor(boot, markT) {
    this.markT = markT;
    this.T = boot.model.T;
    this.samplers = boot.model.defaults.samplers;
    this.err = $("noise-error");
    this.tIn = $("noise-t");
    this.stepsIn = $("noise-steps");
    /** @type {Blob|null} the image being noised */
    this.source = null;
    this.noised = null; // the last /noise answer: {id, t, …}
    this.noiseSeed = 0;
    this.inFlight = false;
    this.stale = false;
    this.runner = new JobRunner({
      go: $("noise-go"), cancel: $("noise-cancel"), err: this.err,
      viewer: new FrameViewer($("noise-viewer"), markT), canStart: () => !!this.noised,
    });
    $("noise-n").max = boot.model.max_batch ?? 64;

    $("noise-file").addEventListener("change", (ev) => {
      const f = ev.target.files[0];
      if (f) this.use(f);
    });
    this.tIn.addEventListener("input", () => {
      $("noise-t-out").textContent = this.tIn.value;
      this.clampSteps();
      this.refresh();
    });
    $("noise-reseed").addEventListener("click", () => {
      this.noiseSeed += 1;
      this.refresh();
    });
    $("noise-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.denoise();
    });
    $("noise-invert").addEventListener("click", () => this.invert());
    this.clampSteps();
    this.loadExamples();
  }

  /** Denoising cannot take more steps than there are timesteps below t. */
  clampSteps() {
    const t = Number(this.tIn.value);
    this.stepsIn.max = t + 1;
    if (Number(this.stepsIn.value) > t + 1) this.stepsIn.value = t + 1;
  }

  /** Start noising ``blob``, and measure its likelihood. */
  use(blob) {
    this.source = blob;
    this.tIn.disabled = false;
    $("noise-reseed").disabled = false;
    $("noise-invert").disabled = false;
    this.refresh();
    this.measure(blob);
  }

  /**
   * POST /likelihood: the image's bits/dim by the ODE and by the bound (noise costs several times a digit's bits;
   * a scribble on black about as few as a digit). One request at a time: an image chosen meanwhile is measured
   * next, and only the newest image's answer is shown.
   */
  async measure(blob) {
    const out = $("noise-bpd");
    out.textContent = "bits/dim: measuring…";
    if (this.measuring) {
      this.nextMeasure = blob;
      return;
    }
    this.measuring = true;
    const form = new FormData();
    form.append("image", blob, blob.name || "image.png");
    try {
      const r = await request("/likelihood", { method: "POST", body: form });
      if (this.source === blob) {
        out.textContent = `bits/dim: ${r.bpd_ode.toFixed(3)} by the ODE (${r.ode_evaluations} evaluations), `
          + `${r.bpd_bound.toFixed(3)} by the bound`;
      }
    } catch (e) {
      if (this.source === blob) out.textContent = `bits/dim: ${e.message}`;
    } finally {
      this.measuring = false;
    }
    const next = this.nextMeasure;
    this.nextMeasure = null;
    if (next) this.measure(next);
  }

  /**
   * POST /invert: the image's x_T by DDIM inversion on the Steps grid, and its decode back. "Denoise from here"
   * then starts from that x_T with DDIM on the same grid: under the Generate panel's digit, the visitor's own
   * handwriting redrawn as that digit.
   */
  async invert() {
    if (!this.source) return;
    const button = $("noise-invert");
    button.disabled = true;
    $("noise-inv-facts").textContent = "inverting…";
    const form = new FormData();
    form.append("image", this.source, this.source.name || "image.png");
    form.append("steps", this.stepsIn.value);
    const label = $("noise-invert-label");
    if (label && label.value !== "") form.append("label", label.value);
    try {
      const r = await request("/invert", { method: "POST", body: form });
      $("noise-rec").src = r.reconstruction;
      $("noise-inv-facts").textContent = `PSNR ${r.psnr.toFixed(1)} dB over ${r.steps} steps each way`;
      this.noised = { id: r.id, t: this.T - 1 };
      // the walk through noise space may start here (static/interpolate.js)
      document.dispatchEvent(new CustomEvent(INVERTED, { detail: { id: r.id, steps: r.steps,
        label: label && label.value !== "" ? Number(label.value) : null } }));
      $("noise-sampler").value = "ddim";
      this.stepsIn.max = this.T;
      this.stepsIn.value = r.steps;
      this.runner.sync();
    } catch (e) {
      $("noise-inv-facts").textContent = "";
      showError(this.err, e.message);
    } finally {
      button.disabled = false;
    }
  }

  /** POST /noise at the slider's t. One request at a time; moves meanwhile mark it stale and the newest t wins. */
  async refresh() {
    if (!this.source) return;
    if (this.inFlight) {
      this.stale = true;
      return;
    }
    this.inFlight = true;
    this.stale = false;
    const form = new FormData();
    form.append("image", this.source, this.source.name || "image.png");
    form.append("t", this.tIn.value);
    form.append("seed", String(this.noiseSeed));
    try {
      this.show(await request("/noise", { method: "POST", body: form }));
    } catch (e) {
      showError(this.err, e.message);
    } finally {
      this.inFlight = false;
    }
    if (this.stale) this.refresh();
  }

  show(noised) {
    this.noised = noised;
    $("noise-x0").src = noised.x0;
    $("noise-xt").src = noised.xt;
    $("noise-xt").dataset.t = String(noised.t);
    $("noise-facts").textContent = `t = ${noised.t}, ᾱ = ${noised.alpha_bar.toFixed(4)}, `
      + `SNR = ${noised.snr.toPrecision(3)}`;
    showError(this.err, null);
    this.runner.sync();
    this.markT(noised.t);
  }

  denoise() {
    if (!this.noised) return;
    const n = Number($("noise-n").value);
    const sampler = $("noise-sampler").value;
    // ode_rk45 picks its own steps: /model's defaults say so with null steps
    const steps = this.samplers[sampler].steps === null ? {} : { steps: Number(this.stepsIn.value) };
    this.runner.run({ init: this.noised.id, n, sampler, ...steps, frame_every: 1, ...readConditioning("gen", n) });
  }

  /** Buttons for a few of the dataset's images, when the model has bundled samples. */
  async loadExamples() {
    const box = $("noise-examples");
    let ex;
    try {
      ex = await request("/examples?n=10");
    } catch (e) {
      showError(this.err, `Could not load dataset samples: ${e.message}`);
      return;
    }
    ex.images.forEach((url, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "example";
      b.setAttribute("aria-label", `use ${ex.dataset} sample ${i + 1}`);
      const img = document.createElement("img");
      img.src = url;
      img.alt = "";
      img.className = "pix";
      b.append(img);
      b.addEventListener("click", () => {
        box.querySelectorAll(".example").forEach((o) => o.removeAttribute("aria-pressed"));
        b.setAttribute("aria-pressed", "true");
        const blob = new Blob([dataUrlBytes(url)], { type: "image/png" });
        blob.name = `${ex.dataset}-${i + 1}.png`;
        this.use(blob);
      });
      box.append(b);
    });
    if (!ex.images.length) box.textContent = "(this model's dataset has no bundled samples; upload an image)";
  }

  /** Best-effort cancel of a running denoise when the page goes away. */
  abandon() {
    this.runner.abandon();
  }
}
