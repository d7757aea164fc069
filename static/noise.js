// Noise your own image: upload or pick a sample → q(x_t | x0) at the slider's t → "Denoise from here".

import { request, showError } from "./api.js";
import { Job, startJob, wireCancel } from "./job.js";
import { FrameViewer } from "./viewer.js";
import { dataUrlBytes } from "./zip.js";

const $ = (id) => document.getElementById(id);

/**
 * @param {{model: object}} boot
 * @param {(t: number|null) => void} markT the schedule marker
 */
export function initNoise(boot, markT) {
  const err = $("noise-error");
  const tIn = $("noise-t");
  const tOut = $("noise-t-out");
  const stepsIn = $("noise-steps");
  const go = $("noise-go");
  const cancel = $("noise-cancel");
  const viewer = new FrameViewer($("noise-viewer"), markT);
  $("noise-n").max = boot.model.max_batch ?? 64;

  /** @type {Blob|null} */
  let source = null;
  let noised = null; // the last /noise answer: {id, t, …}
  let noiseSeed = 0;
  let inFlight = false;
  let stale = false;
  let job = null;

  const clampSteps = () => {
    const t = Number(tIn.value);
    stepsIn.max = t + 1;
    if (Number(stepsIn.value) > t + 1) stepsIn.value = t + 1;
  };

  // One request at a time; while one is out, slider moves only mark the result stale and the newest t wins.
  async function refresh() {
    if (!source) return;
    if (inFlight) {
      stale = true;
      return;
    }
    inFlight = true;
    stale = false;
    const form = new FormData();
    form.append("image", source, source.name || "image.png");
    form.append("t", tIn.value);
    form.append("seed", String(noiseSeed));
    try {
      noised = await request("/noise", { method: "POST", body: form });
      $("noise-x0").src = noised.x0;
      $("noise-xt").src = noised.xt;
      $("noise-xt").dataset.t = String(noised.t);
      $("noise-facts").textContent = `t = ${noised.t}, ᾱ = ${noised.alpha_bar.toFixed(4)}, `
        + `SNR = ${noised.snr.toPrecision(3)}`;
      showError(err, null);
      go.disabled = !!(job && !job.ended);
      markT(noised.t);
    } catch (e) {
      showError(err, e.message);
    } finally {
      inFlight = false;
    }
    if (stale) refresh();
  }

  function useSource(blob) {
    source = blob;
    tIn.disabled = false;
    $("noise-reseed").disabled = false;
    refresh();
  }

  $("noise-file").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    if (f) useSource(f);
  });

  tIn.addEventListener("input", () => {
    tOut.textContent = tIn.value;
    clampSteps();
    refresh();
  });
  $("noise-reseed").addEventListener("click", () => {
    noiseSeed += 1;
    refresh();
  });
  clampSteps();

  request("/examples?n=10").then((ex) => {
    const box = $("noise-examples");
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
        useSource(blob);
      });
      box.append(b);
    });
    if (!ex.images.length) box.textContent = "(this model's dataset has no bundled samples; upload an image)";
  }).catch((e) => showError(err, `Could not load dataset samples: ${e.message}`));

  const busy = (on) => {
    go.disabled = on || !noised;
    cancel.disabled = !on;
  };

  $("noise-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!noised || (job && !job.ended)) return;
    showError(err, null);
    busy(true);
    const body = {
      init: noised.id,
      n: Number($("noise-n").value),
      sampler: $("noise-sampler").value,
      steps: Number(stepsIn.value),
      frame_every: 1,
    };
    job = new Job(body, viewer, { onEnd: () => busy(false), onError: (msg) => showError(err, msg) });
    await startJob(job, err, busy);
  });
  wireCancel(cancel, () => job, err);

  return () => job && job.abandon();
}
