// The Generate panel: read the controls, run a job into its viewer, Cancel it.

import { JobRunner } from "./job.js";
import { FrameViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

/**
 * The request body from the form. Fields are sent as typed, not pre-validated: the server is the one
 * authority on limits, and its 422 (naming the field and the limit) is shown on the page.
 * @param {number} T the model's number of diffusion steps
 */
export function readGenerateForm(T) {
  const sampler = $("gen-sampler").value;
  const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const body = {
    n: num("gen-n"),
    sampler: sampler === "ddpm-full" ? "ddpm" : sampler,
    steps: sampler === "ddpm-full" ? T : num("gen-steps"),
    frame_every: num("gen-stride"),
  };
  if (sampler === "ddim") body.eta = num("gen-eta");
  // seeds go up to 2^63-1, beyond what a JS number holds exactly; the server parses numeric strings
  if ($("gen-seed-fixed").checked) body.seed = $("gen-seed").value.trim();
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}

function syncSamplerFields(T) {
  const sampler = $("gen-sampler").value;
  const steps = $("gen-steps");
  if (sampler === "ddpm-full") {
    steps.dataset.kept = steps.dataset.kept || steps.value;
    steps.value = T;
    steps.disabled = true;
  } else if (steps.disabled) {
    steps.value = steps.dataset.kept || steps.value;
    delete steps.dataset.kept;
    steps.disabled = false;
  }
  $("gen-eta").disabled = sampler !== "ddim";
}

/**
 * @param {{model: object, defaults: object}} boot the page's boot data
 * @param {(t: number|null) => void} markT the schedule marker
 */
export function initGenerate(boot, markT) {
  const T = boot.model.T;
  const viewer = new FrameViewer($("gen-viewer"), markT);
  const runner = new JobRunner({ go: $("gen-go"), cancel: $("gen-cancel"), err: $("gen-error"), viewer });
  const seedFixed = $("gen-seed-fixed");
  const seed = $("gen-seed");

  $("gen-sampler").value = boot.defaults.sampler === "ddpm" && boot.defaults.steps >= T ? "ddpm-full"
    : boot.defaults.sampler;
  syncSamplerFields(T);
  $("gen-sampler").addEventListener("change", () => syncSamplerFields(T));
  seedFixed.addEventListener("change", () => {
    seed.disabled = !seedFixed.checked;
    if (seedFixed.checked && !seed.value && viewer.seed !== null) seed.value = String(viewer.seed);
    if (seedFixed.checked) seed.focus();
  });

  $("gen-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await runner.run(readGenerateForm(T), (state) => {
      if (state === "done" && !seedFixed.checked) seed.placeholder = `random (last: ${viewer.seed})`;
    });
  });

  return () => runner.abandon();
}
