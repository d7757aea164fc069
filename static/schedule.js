// The schedule panel: ᾱ_t and SNR(t) for this model, linear and cosine for comparison, and a live t marker.

import { request, showError } from "./api.js";
import { linePlot } from "./plots.js";

/** Fetch /schedule and draw both plots; returns a function that marks t on both (null hides the marker). */
export async function initSchedule() {
  const err = document.getElementById("sched-error");
  let s;
  try {
    s = await request("/schedule");
  } catch (e) {
    showError(err, `Could not load the schedule: ${e.message}`);
    return () => {};
  }
  const series = (key) => [
    { label: "linear", ys: s.compare.linear[key], cls: "cmp-linear" },
    { label: "cosine", ys: s.compare.cosine[key], cls: "cmp-cosine" },
    { label: `this model (${s.name})`, ys: s[key], cls: "model" },
  ];
  const marks = [
    linePlot(document.getElementById("plot-alpha"), series("alpha_bars")),
    linePlot(document.getElementById("plot-snr"), series("snr"), { log: true }),
  ];
  return (t) => marks.forEach((mark) => mark(t));
}
