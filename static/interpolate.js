// Interpolation through noise space: a strip from one seed's x_T to another's along a great circle, decoded by a
// deterministic sampler, the class embedding blending from one digit to the other (POST /interpolate).

import { JobRunner } from "./job.js";
import { FrameViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

/**
 * @param {{model: object}} boot the page's boot data
 * @param {(t: number|null) => void} markT the schedule marker
 * @returns {() => void} what to call when the page goes away
 */
export function initInterpolate(boot, markT) {
  const viewer = new FrameViewer($("interp-viewer"), markT);
  const runner = new JobRunner({ go: $("interp-go"), cancel: $("interp-cancel"), err: $("interp-error"), viewer });
  const label = (id) => ($(id) && $(id).value !== "" ? Number($(id).value) : null);
  $("interp-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const k = Number($("interp-k").value);
    viewer.columns = k; // one row: the strip
    const body = { seeds: [$("interp-seed-a").value.trim(), $("interp-seed-b").value.trim()], k, frame_every: 1,
      steps: Number($("interp-steps").value) };
    if (boot.model.classes.length) body.labels = [label("interp-label-a"), label("interp-label-b")];
    await runner.run(body, () => {}, "/interpolate");
  });
  return () => runner.abandon();
}
