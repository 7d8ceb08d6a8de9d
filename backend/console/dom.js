// The console's DOM helpers and formatting. Text is only ever inserted as text nodes or
// attribute values: never parsed as HTML.

export const SEVERITIES = ["medium", "high", "critical"];
export const STATES = ["online", "offline", "lost", "timed_out", "unknown"];
export const TRIAGE_STATES = ["open", "acknowledged", "resolved"];
export const KINDS = [
  "unknown_executable", "modified_executable", "suspicious_exec", "unexpected_connection",
  "unexpected_listener", "protected_file_changed", "integrity_drift", "agent_tamper",
  "sensor_data_loss", "policy_rejected", "alerts_dropped", "unverified_executable",
  "unexpected_lineage", "setuid_bit_set", "file_capability_set", "loader_environment",
  "kernel_module_loaded", "process_injection", "mount_changed", "append_only_violated",
  "sensitive_file_read", "blocked_exec", "blocked_connection", "blocked_listener",
  "would_block", "enforcement_weakened", "agent_interrupted",
  // Raised by the backend itself (presence).
  "device_silent", "device_returned",
];
export const PAGE = 100;
export const SVG_NS = "http://www.w3.org/2000/svg";

// What the current view must close when another replaces it (an event stream).
export const view = { cleanup: [] };

// ---- DOM helpers -------------------------------------------------------------------------

// An element; `attrs` set as attributes (`class`, `href`, `data-*`, ...) except `on*`
// functions, which become listeners; children are nodes or strings (text nodes).
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") node.addEventListener(name.replace(/^on/, ""), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export function main() {
  return document.getElementById("main");
}

export function show(...children) {
  append(clear(main()), children);
}

// A table; a header starting with `#` is a number column (right-aligned).
export function table(headers, rows, id) {
  return el("table", { id: id || null },
    el("thead", {}, el("tr", {}, headers.map((h) =>
      el("th", { class: h.startsWith("#") ? "num" : null }, h.replace(/^#/, ""))))),
    el("tbody", {}, rows));
}

export function td(value, cls) {
  return el("td", { class: cls || null }, value === null || value === undefined ? "–" : value);
}

// ---- formatting --------------------------------------------------------------------------

export function pad(n) {
  return String(n).padStart(2, "0");
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
}

export function fmtAgo(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

export function sevBadge(severity) {
  return el("span", { class: `sev sev-${SEVERITIES.includes(severity) ? severity : "medium"}` },
    severity);
}

export function stateBadge(state) {
  return el("span", { class: `state state-${STATES.includes(state) ? state : "unknown"}` },
    state.replace("_", " "));
}

export function triageState(row) {
  return row.triage && row.triage.state ? row.triage.state : "open";
}

export function triageBadge(row) {
  const state = triageState(row);
  return el("span", { class: `triage triage-${state}`, "data-triage": state }, state);
}

