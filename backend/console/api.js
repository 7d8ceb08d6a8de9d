// The JSON API of the backend, and the signed-in user.

import { el } from "./dom.js";

// The signed-in user: {user, role, csrf}, or null.
export const session = { me: null };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; a 401 sends the user to the login page. Unsafe methods carry the session's
// CSRF token.
export async function api(path, options = {}) {
  const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
  if (init.method !== "GET") {
    init.headers["X-CSRF-Token"] = session.me ? session.me.csrf : "";
  }
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    if (response.status === 401 && !options.noRedirect) {
      session.me = null;
      if (!location.hash.startsWith("#/login")) {
        sessionStorage.setItem("picket-after-login", location.hash);
        location.hash = "#/login";
      }
    }
    throw new ApiError(response.status, message);
  }
  return body;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export function errorBox(e) {
  return el("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e));
}

export function isRole(...roles) {
  return session.me !== null && roles.includes(session.me.role);
}

