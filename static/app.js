// Entry point: read the boot data the server rendered, then wire up the panels.

import { showError } from "./api.js";
import { initGenerate } from "./generate.js";
import { initGuidanceGrid } from "./grid.js";
import { initInterpolate } from "./interpolate.js";
import { NoisePanel } from "./noise.js";
import { initPlayground } from "./playground.js";
import { RacePanel } from "./race.js";
import { initSchedule } from "./schedule.js";

async function main() {
  const boot = JSON.parse(document.getElementById("boot").textContent);
  // both viewers move the marker; draw the plots first so there is a marker to move
  let markT = () => {};
  const mark = (t) => markT(t);
  const abandonGen = initGenerate(boot, mark);
  const noise = new NoisePanel(boot, mark);
  const race = new RacePanel(boot, mark);
  const abandonGrid = initGuidanceGrid(boot, mark);
  const abandonInterp = initInterpolate(boot, mark);
  const abandonToy = initPlayground(boot);
  markT = await initSchedule();
  // leaving the page must not leave the server sampling for nobody
  window.addEventListener("pagehide", () => {
    abandonGen();
    noise.abandon();
    race.abandon();
    abandonGrid();
    abandonInterp();
    abandonToy();
  });
  document.body.dataset.ready = "true";
}

main().catch((e) => showError(document.getElementById("page-error"), `The page failed to start: ${e.message}`));
