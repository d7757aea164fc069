// Interpolation through noise space: a strip from one seed's x_T to another's along a great circle, decoded by a
// deterministic sampler, the class embedding blending from one digit to the other (POST /interpolate).

import { JobRunner } from "./job.js";
import { FrameViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
/** The document event the noise panel sends after an inversion: detail {id, steps, label}. */
export const INVERTED = "ddpm:inverted";

/**
 * @param {{model: object}} boot the page's boot data
 * @param {(t: number|null) => void} markT the schedule marker
 * @returns {() => void} what to call when the page goes away
 */
export function initInterpolate(boot, markT) {
  const viewer = new FrameViewer($("interp-viewer"), markT);
  const runner = new JobRunner({ go: $("interp-go"), cancel: $("interp-cancel"), err: $("interp-error"), viewer });
  const label = (id) => ($(id) && $(id).value !== "" ? Number($(id).value) : null);
  let inverted = null; // the noise panel's last inversion: the strip may start at its x_T
  document.addEventListener(INVERTED, (ev) => {
    inverted = ev.detail;
    $("interp-from-inv").disabled = false;
    $("interp-from-inv").checked = true;
    $("interp-steps").value = String(inverted.steps); // its x_T decodes back on its own grid
    if ($("interp-label-a")) $("interp-label-a").value = inverted.label === null ? "" : String(inverted.label);
    $("interp-seed-a").disabled = true;
  });
  $("interp-from-inv").addEventListener("change", () => { $("interp-seed-a").disabled = $("interp-from-inv").checked; });
  $("interp-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const k = Number($("interp-k").value);
    viewer.columns = k; // one row: the strip
    const fromInv = inverted !== null && $("interp-from-inv").checked;
    const body = { seeds: [fromInv ? null : $("interp-seed-a").value.trim(), $("interp-seed-b").value.trim()], k,
      frame_every: 1, steps: Number($("interp-steps").value) };
    if (fromInv) body.inits = [inverted.id, null];
    if (boot.model.classes.length) body.labels = [label("interp-label-a"), label("interp-label-b")];
    await runner.run(body, () => {}, "/interpolate");
  });
  return () => runner.abandon();
}
