// The guidance grid: one seed, a row per guidance scale and a column per digit, as ONE job whose rows share
// their x_T and noise (the request's guidance_grid), so the rows differ by the scale alone: fidelity against
// diversity on the same draws.

import { JobRunner } from "./job.js";
import { FrameViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

/**
 * @param {{model: object, defaults: object}} boot the page's boot data
 * @param {(t: number|null) => void} markT the schedule marker
 * @returns {() => void} what to call when the page goes away
 */
export function initGuidanceGrid(boot, markT) {
  if (!$("grid-form")) return () => {}; // an unconditional model has no grid
  const digits = boot.model.classes.length;
  const viewer = new FrameViewer($("grid-viewer"), markT);
  viewer.columns = digits;
  const runner = new JobRunner({ go: $("grid-go"), cancel: $("grid-cancel"), err: $("grid-error"), viewer });
  $("grid-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // sent as typed: the server names a bad scale (and the limits) in its 422
    const scales = $("grid-scales").value.split(",").map((s) => (s.trim() === "" ? s : Number(s)));
    const seed = $("grid-seed").value.trim();
    await runner.run({
      n: digits, labels: "each", guidance_grid: scales, frame_every: 1,
      ...(seed === "" ? {} : { seed }),
    });
  });
  return () => runner.abandon();
}
