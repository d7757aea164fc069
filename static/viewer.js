// One job's view: progress bar, the x_t and x̂0 grids side by side, a timeline over the frames received,
// and the downloads. It only displays; job.js feeds it events. Frames arrive as raw pixels and are drawn
// on canvases; PNGs are made in the browser only for the downloads.

import { zipBlob, dataUrlBytes } from "./zip.js";

/** A frame's raw image: base64 of ``height × width × channels`` uint8 bytes, row-major. */
function decodeRaw(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

/** Draw raw pixels (1 channel: grey; 3: RGB) on ``canvas``, resizing it to the image. */
function draw(canvas, bytes, width, height, channels) {
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const img = new ImageData(width, height);
  const px = img.data;
  for (let i = 0, j = 0; i < width * height; i++, j += channels) {
    px[4 * i] = bytes[j];
    px[4 * i + 1] = bytes[channels === 1 ? j : j + 1];
    px[4 * i + 2] = bytes[channels === 1 ? j : j + 2];
    px[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
}

/** A PNG data URL of one of a frame's images. */
function pngOf(f, key) {
  const canvas = document.createElement("canvas");
  draw(canvas, f[key], f.width, f.height, f.channels);
  return canvas.toDataURL("image/png");
}

/** A frame's t as shown: the last step ends at the clean images, whatever t a solver last predicted at. */
const tText = (f) => (f.step === f.of ? "t = 0 (done)" : `t = ${f.t}`);
const fmtRate = (r) => (r >= 10 ? r.toFixed(0) : r.toFixed(1));
const fmtSecs = (s) => (s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`);

export class FrameViewer {
  /**
   * @param {HTMLElement} root an empty element; the #viewer-template is stamped into it
   * @param {(t: number|null) => void} onT told which t is on screen (for the schedule marker)
   */
  constructor(root, onT = () => {}) {
    root.append(document.getElementById("viewer-template").content.cloneNode(true));
    const q = (sel) => root.querySelector(sel);
    this.root = root;
    this.bar = q(".bar");
    this.status = q(".status");
    this.xt = q(".xt");
    this.x0 = q(".x0");
    this.tLabel = q(".t-label");
    this.cellLabels = q(".cell-labels");
    this.scrub = q(".scrub");
    this.scrubOut = q(".scrub-out");
    this.dlPng = q(".dl-png");
    this.dlZip = q(".dl-zip");
    this.onT = onT;
    // ids let tests and assistive tech find the parts of each viewer
    const p = root.dataset.prefix;
    for (const [el, name] of [[this.xt, "xt"], [this.x0, "x0"], [this.scrub, "scrub"], [this.bar, "bar"],
      [this.status, "status"], [this.dlPng, "dl-png"], [this.dlZip, "dl-zip"], [this.scrubOut, "scrub-out"],
      [this.cellLabels, "cell-labels"]]) {
      el.id = `${p}-${name}`;
    }
    this.scrub.addEventListener("input", () => this.show(Number(this.scrub.value)));
    this.dlZip.addEventListener("click", () => this.downloadZip());
    this.reset();
  }

  reset() {
    /** @type {{step:number, of:number, t:number, width:number, height:number, channels:number,
     *   xt:Uint8Array, x0:Uint8Array}[]} */
    this.frames = [];
    this.seed = null;
    this.tStart = null;
    this.steps = 0;
    this.bar.value = 0;
    this.bar.max = 1;
    this.scrub.max = 0;
    this.scrub.value = 0;
    this.scrub.disabled = true;
    this.scrubOut.textContent = "no frames yet";
    this.dlPng.hidden = true;
    this.dlZip.hidden = true;
    this.cellLabels.hidden = true;
    this.cellLabels.replaceChildren();
    this.root.dataset.state = "idle";
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  queued(position) {
    this.root.dataset.state = "queued";
    this.setStatus(position > 0 ? `queued: position ${position}` : "starting…");
  }

  /**
   * @param {number} steps
   * @param {(number|null)[]|null} labels each image's class (null: no label), or null for an unconditional model
   */
  started(steps, labels = null) {
    if (labels) this.showLabels(labels);
    this.root.dataset.state = "running";
    this.steps = steps;
    this.bar.max = steps;
    this.tStart = performance.now();
    this.setStatus(`step 0/${steps}`);
  }

  frame(d) {
    const following = this.frames.length === 0 || Number(this.scrub.value) === this.frames.length - 1;
    const f = { ...d, xt: decodeRaw(d.xt), x0: decodeRaw(d.x0) };
    this.frames.push(f);
    this.scrub.max = this.frames.length - 1;
    this.scrub.disabled = false;
    if (following) {
      this.scrub.value = this.frames.length - 1;
      this.show(this.frames.length - 1);
    } else {
      this.updateScrubLabel(Number(this.scrub.value));
    }
    this.bar.max = f.of;
    this.bar.value = f.step;
    const secs = (performance.now() - (this.tStart ?? performance.now())) / 1000;
    const rate = secs > 0 ? f.step / secs : 0;
    const eta = rate > 0 ? (f.of - f.step) / rate : 0;
    this.setStatus(`step ${f.step}/${f.of} · ${fmtRate(rate)} it/s · ETA ${fmtSecs(eta)}`);
  }

  /**
   * Each cell's class over the x̂0 grid, laid out as the server tiles it: ``this.columns`` per row when a panel
   * set it (a guidance grid's n), else ⌈√n⌉, centred.
   */
  showLabels(labels) {
    const cols = this.columns ?? Math.ceil(Math.sqrt(labels.length));
    const rows = Math.ceil(labels.length / cols);
    const box = this.cellLabels;
    box.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
    box.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
    box.style.height = `${(100 * rows) / cols}%`;
    box.style.top = `${(50 * (cols - rows)) / cols}%`;
    box.replaceChildren(...labels.map((c) => {
      const cell = document.createElement("span");
      cell.textContent = c === null ? "–" : String(c);
      cell.title = c === null ? "no label" : `asked for a ${c}`;
      return cell;
    }));
    box.hidden = false;
  }

  /** Put frame i of those received on screen. */
  show(i) {
    const f = this.frames[i];
    if (!f) return;
    draw(this.xt, f.xt, f.width, f.height, f.channels);
    draw(this.x0, f.x0, f.width, f.height, f.channels);
    this.xt.dataset.step = String(f.step);
    this.x0.dataset.step = String(f.step);
    this.tLabel.textContent = tText(f);
    this.updateScrubLabel(i);
    this.onT(f.t);
  }

  updateScrubLabel(i) {
    const f = this.frames[i];
    this.scrubOut.textContent = `frame ${i + 1}/${this.frames.length} · step ${f.step}/${f.of} · ${tText(f)}`;
  }

  done(d) {
    this.root.dataset.state = "done";
    this.seed = d.seed;
    const last = this.frames[this.frames.length - 1];
    if (last) {
      // the final frame's x_t is the finished grid; jump to it even if the user was scrubbing
      this.scrub.value = this.frames.length - 1;
      this.show(this.frames.length - 1);
      this.bar.value = this.bar.max;
      this.dlPng.href = pngOf(last, "xt");
      this.dlPng.download = `ddpm-seed-${d.seed}.png`;
      this.dlPng.hidden = false;
      this.dlZip.hidden = false;
    }
    this.setStatus(`done in ${fmtSecs(d.elapsed_ms / 1000)} · seed ${d.seed} · ${d.images.length} images`);
    this.onT(null);
  }

  cancelled(step) {
    this.root.dataset.state = "cancelled";
    this.setStatus(`cancelled at step ${step}/${this.steps}`);
    if (this.frames.length) this.dlZip.hidden = false;
    this.onT(null);
  }

  failed(message) {
    this.root.dataset.state = "error";
    this.setStatus(`failed: ${message}`);
    this.onT(null);
  }

  /** A store-only zip of every frame received: xt_0001.png, x0_0001.png, … (step numbers). */
  downloadZip() {
    const width = Math.max(4, String(Math.max(...this.frames.map((f) => f.of), 1)).length);
    const files = [];
    for (const f of this.frames) {
      const s = String(f.step).padStart(width, "0");
      files.push({ name: `xt_${s}.png`, data: dataUrlBytes(pngOf(f, "xt")) });
      files.push({ name: `x0_${s}.png`, data: dataUrlBytes(pngOf(f, "x0")) });
    }
    const url = URL.createObjectURL(zipBlob(files));
    const a = document.createElement("a");
    a.href = url;
    a.download = `ddpm-frames${this.seed !== null ? `-seed-${this.seed}` : ""}.zip`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }
}
