// REST client for the clinic app (contract: docs/api.md).
//
// * Every state-changing request sends the session's CSRF token in X-CSRF-Token.
// * A non-2xx answer becomes an ApiError whose message is the server's `detail`.
// * 401 on any API call means the session ended: the page goes to the sign-in page.

let csrfToken = null;

/** Remember the session's CSRF token (from GET /api/auth/session). */
export function setCsrfToken(token) { csrfToken = token; }

export class ApiError extends Error {
  /** @param {number} status HTTP status (0 when the server could not be reached). */
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let signingOut = false;

/** Mark a sign-out in progress (or not): a request still in flight that the server then
 * answers 401 reads as signed out, not as an ended session. */
export function setSigningOut(on) { signingOut = on; }

/** Leave for the sign-in page, saying why (while signing out: signed out). */
export function toLogin(reason = "expired") {
  window.location.assign(`/login?${signingOut ? "signedout" : reason}=1`);
}

async function errorFrom(res) {
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  const detail = body && typeof body.detail === "string" ? body.detail
    : `the server answered ${res.status} ${res.statusText}`.trim();
  return new ApiError(res.status, detail, body);
}

/**
 * Call the API.
 * @param {string} method GET, POST, PATCH, DELETE.
 * @param {string} path e.g. "/api/studies".
 * @param {object|FormData} [body] JSON-serialisable object or FormData.
 * @returns {Promise<any>} the parsed JSON answer (null for 204).
 */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  } catch (_) {
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  if (res.status === 401) {
    toLogin("expired");
    throw new ApiError(401, "Your session ended. Please sign in again.");
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const type = res.headers.get("Content-Type") || "";
  return type.includes("json") ? res.json() : res.text();
}

/**
 * Upload a study (multipart, field `files` repeated) with progress.
 * fetch() cannot report upload progress, so this uses XMLHttpRequest.
 * @param {File[]} files
 * @param {(fraction: number) => void} onProgress called with 0..1 while sending.
 * @returns {Promise<{status: number, body: any}>} resolves on 2xx, rejects with ApiError.
 */
export function uploadStudy(files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/studies");
    xhr.setRequestHeader("Accept", "application/json");
    if (csrfToken) xhr.setRequestHeader("X-CSRF-Token", csrfToken);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 401) { toLogin("expired"); reject(new ApiError(401, "Your session ended.")); return; }
      if (xhr.status >= 200 && xhr.status < 300) { resolve({ status: xhr.status, body }); return; }
      const detail = body && typeof body.detail === "string" ? body.detail
        : `the server answered ${xhr.status}`;
      reject(new ApiError(xhr.status, detail, body));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0,
      "The upload was interrupted: the server cannot be reached.")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "The upload was cancelled.")));
    xhr.send(form);
  });
}
