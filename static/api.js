// Talking to /api/v1: every failure becomes an ApiError whose message is fit to show on the page.

export const API = "/api/v1";

export class ApiError extends Error {
  /** @param {string} message @param {number} status @param {number|null} retryAfter seconds */
  constructor(message, status, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** FastAPI's 422 detail is a list of {loc, msg}; name the field, drop the "body"/"query" prefix. */
export function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const loc = (d.loc || []).filter((p) => p !== "body" && p !== "query" && p !== "form");
      return loc.length ? `${loc.join(".")}: ${d.msg}` : d.msg;
    }).join("; ");
  }
  return JSON.stringify(detail);
}

async function errorFrom(resp) {
  let text = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.detail !== undefined) text = describeDetail(body.detail);
  } catch {
    // not JSON: keep the status line
  }
  const ra = resp.headers.get("Retry-After");
  const retry = ra === null ? null : Number(ra);
  const prefix = { 413: "Too large", 415: "Unsupported", 422: "Invalid input", 429: "Server busy" }[resp.status]
    || `Error ${resp.status}`;
  const tail = retry !== null ? ` (retry after ${retry} s)` : "";
  return new ApiError(`${prefix}: ${text}${tail}`, resp.status, retry);
}

/** fetch + JSON, throwing ApiError on any non-2xx answer or network failure. */
export async function request(path, init = {}) {
  let resp;
  try {
    resp = await fetch(API + path, init);
  } catch (e) {
    throw new ApiError(`Cannot reach the server (${e.message})`, 0);
  }
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

export const postJson = (path, body) =>
  request(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

/** Show (or with null, hide) a message in an error element. */
export function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}
