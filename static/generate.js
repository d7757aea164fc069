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
    spacing: $("gen-spacing").value,
    frame_every: num("gen-stride"),
  };
  // a sampler's own fields, and steps and spacing, go only where the sampler has them (the server refuses the rest)
  for (const f of OWN_FIELDS) if (!$(`gen-${f}`).disabled) body[f] = num(`gen-${f}`);
  for (const f of ["steps", "spacing"]) if ($(`gen-${f}`).disabled && sampler !== "ddpm-full") delete body[f];
  Object.assign(body, readConditioning("gen", body.n));
  // seeds go up to 2^63-1, beyond what a JS number holds exactly; the server parses numeric strings
  if ($("gen-seed-fixed").checked) body.seed = $("gen-seed").value.trim();
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}

/** Fields that only some samplers take: /model's per-sampler defaults give each sampler's value, null where it has none. */
const OWN_FIELDS = ["eta", "snr", "corrector_steps", "rtol", "atol"];

/**
 * Labels, guidance and its interval from a panel's digit picker, slider and t range (absent for an
 * unconditional model). "one of each" cycles 0–9 over the n images.
 */
export function readConditioning(prefix, n) {
  const pick = $(`${prefix}-labels`);
  if (!pick) return {};
  const guided = {
    guidance: Number($(`${prefix}-guidance`).value),
    guidance_interval: [Number($(`${prefix}-gi-lo`).value), Number($(`${prefix}-gi-hi`).value)],
  };
  if (pick.value === "each") return { labels: Array.from({ length: n || 0 }, (_, i) => i % 10), ...guided };
  if (pick.value === "any" || pick.value === "none") return { labels: pick.value, ...guided };
  return { labels: Number(pick.value), ...guided };
}

/** Fill steps, spacing and the sampler's own fields with the server's defaults for it, and say what it is. */
function applySamplerDefaults(boot) {
  const T = boot.model.T;
  const sampler = $("gen-sampler").value;
  const steps = $("gen-steps");
  const name = sampler === "ddpm-full" ? "ddpm" : sampler;
  const d = boot.model.defaults.samplers[name];
  const adaptive = d.steps === null; // ode_rk45 picks its own steps
  steps.disabled = sampler === "ddpm-full" || adaptive;
  steps.value = sampler === "ddpm-full" ? T : adaptive ? "" : d.steps;
  if (d.spacing !== null) $("gen-spacing").value = d.spacing;
  $("gen-spacing").disabled = sampler === "ddpm-full" || adaptive;
  for (const f of OWN_FIELDS) {
    $(`gen-${f}`).disabled = d[f] === null;
    if (d[f] !== null) $(`gen-${f}`).value = d[f];
  }
  $("gen-about").textContent = sampler === "ddpm-full" ? `${d.about} All ${T} steps: the original DDPM.` : d.about;
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

  $("gen-sampler").value = boot.defaults.sampler;
  applySamplerDefaults(boot);
  $("gen-sampler").addEventListener("change", () => applySamplerDefaults(boot));
  const guidance = $("gen-guidance");
  if (guidance) guidance.addEventListener("input", () => { $("gen-guidance-out").value = guidance.value; });
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
