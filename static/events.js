// The wire names the page relies on: a job's server-sent events (app/http/sse.py names the same ones) and the
// frame format it asks for (raw pixels, drawn on a canvas).

export const EVENTS = Object.freeze({
  QUEUED: "queued",
  STARTED: "started",
  FRAME: "frame",
  DONE: "done",
  CANCELLED: "cancelled",
  ERROR: "error",
  TOY_STARTED: "toy_started",
  TOY_PROGRESS: "toy_progress",
  TOY_DONE: "toy_done",
});

export const FRAME_FORMAT = "raw";
