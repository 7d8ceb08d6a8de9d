// The Picket fleet console: one page, its views chosen by the URL fragment (#/overview, ...).
// All data comes from the JSON API of the same server. Text from devices is only ever put in
// the page with textContent or as attribute values set by setAttribute: never parsed as HTML.
"use strict";

const SEVERITIES = ["medium", "high", "critical"];
const STATES = ["online", "offline", "timed_out", "unknown"];
const TRIAGE_STATES = ["open", "acknowledged", "resolved"];
const KINDS = [
  "unknown_executable", "modified_executable", "suspicious_exec", "unexpected_connection",
  "unexpected_listener", "protected_file_changed", "integrity_drift", "agent_tamper",
  "sensor_data_loss", "policy_rejected", "alerts_dropped", "unverified_executable",
  "unexpected_lineage", "setuid_bit_set", "file_capability_set", "loader_environment",
  "kernel_module_loaded", "process_injection", "mount_changed", "append_only_violated",
  "sensitive_file_read", "blocked_exec", "blocked_connection", "blocked_listener",
  "would_block", "enforcement_weakened", "agent_interrupted",
];
const PAGE = 100;
const SVG_NS = "http://www.w3.org/2000/svg";

// The signed-in user: {user, role, csrf}, or null.
let me = null;
// What the current view must close when another replaces it (an event stream).
let cleanup = [];

// ---- DOM helpers -------------------------------------------------------------------------

// An element; `attrs` set as attributes (`class`, `href`, `data-*`, ...) except `on*`
// functions, which become listeners; children are nodes or strings (text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") node.addEventListener(name.replace(/^on/, ""), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

function main() {
  return document.getElementById("main");
}

function show(...children) {
  append(clear(main()), children);
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) =>
      el("th", { class: h.startsWith("#") ? "num" : null }, h.replace(/^#/, ""))))),
    el("tbody", {}, rows));
}

function td(value, cls) {
  return el("td", { class: cls || null }, value === null || value === undefined ? "–" : value);
}

// ---- formatting --------------------------------------------------------------------------

function pad(n) {
  return String(n).padStart(2, "0");
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
}

function fmtAgo(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function sevBadge(severity) {
  return el("span", { class: `sev sev-${SEVERITIES.includes(severity) ? severity : "medium"}` },
    severity);
}

function stateBadge(state) {
  return el("span", { class: `state state-${STATES.includes(state) ? state : "unknown"}` },
    state.replace("_", " "));
}

function triageState(row) {
  return row.triage && row.triage.state ? row.triage.state : "open";
}

function triageBadge(row) {
  const state = triageState(row);
  return el("span", { class: `triage triage-${state}`, "data-triage": state }, state);
}

// ---- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; a 401 sends the user to the login page. Unsafe methods carry the session's
// CSRF token.
async function api(path, options = {}) {
  const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
  if (init.method !== "GET") {
    init.headers["X-CSRF-Token"] = me ? me.csrf : "";
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
      me = null;
      renderHeader();
      if (!location.hash.startsWith("#/login")) {
        sessionStorage.setItem("picket-after-login", location.hash);
        location.hash = "#/login";
      }
    }
    throw new ApiError(response.status, message);
  }
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

function errorBox(e) {
  return el("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e));
}

function isRole(...roles) {
  return me !== null && roles.includes(me.role);
}

// ---- header and routing ------------------------------------------------------------------

function renderHeader() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const logout = document.getElementById("logout");
  nav.hidden = me === null;
  logout.hidden = me === null;
  who.textContent = me ? `${me.user} (${me.role})` : "";
  for (const a of nav.querySelectorAll("a")) {
    const role = a.getAttribute("data-role");
    a.hidden = role !== null && !(me && me.role === role);
    const page = a.getAttribute("data-page");
    a.classList.toggle("current", location.hash.startsWith(`#/${page}`));
  }
}

async function logout() {
  try {
    await api("/api/logout", { method: "POST", noRedirect: true });
  } catch (_) {
    // The session is gone either way.
  }
  me = null;
  location.hash = "#/login";
  route();
}

function closeView() {
  for (const f of cleanup) f();
  cleanup = [];
}

async function route() {
  closeView();
  const hash = location.hash || "#/overview";
  const parts = hash.split("?")[0].replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] !== "login" && me === null) {
    try {
      me = await api("/api/me", { noRedirect: true });
    } catch (e) {
      if (e.status === 401) {
        sessionStorage.setItem("picket-after-login", hash);
        location.hash = "#/login";
        return;
      }
      renderHeader();
      show(errorBox(e));
      return;
    }
  }
  renderHeader();
  const view = {
    login: loginView,
    overview: overviewView,
    alerts: (id) => (id ? alertView(id) : alertsView()),
    devices: deviceView,
    policies: policiesView,
    audit: auditView,
  }[parts[0]];
  if (!view) {
    show(el("h1", {}, "Not found"), el("p", {}, "No such page."));
    return;
  }
  try {
    await view(parts[1]);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) show(errorBox(e));
  }
}

// ---- login -------------------------------------------------------------------------------

function loginView() {
  document.title = "Log in · Picket";
  const message = el("p", { class: "error", role: "alert", id: "login-error" });
  const user = el("input", { name: "user", id: "login-user", autocomplete: "username", required: true });
  const password = el("input", {
    name: "password", id: "login-password", type: "password",
    autocomplete: "current-password", required: true,
  });
  const form = el("form", { class: "stack panel", id: "login-form" },
    el("label", {}, "User", user),
    el("label", {}, "Password", password),
    el("button", { class: "primary", type: "submit" }, "Log in"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    try {
      me = await api("/api/login", {
        method: "POST", body: { user: user.value, password: password.value }, noRedirect: true,
      });
      const next = sessionStorage.getItem("picket-after-login");
      sessionStorage.removeItem("picket-after-login");
      location.hash = next && !next.startsWith("#/login") ? next : "#/overview";
    } catch (e) {
      message.textContent = e.status === 401 ? "Wrong user or password." :
        e.status === 429 ? "Too many failed logins: wait a moment and try again." : e.message;
      password.value = "";
    }
  });
  show(el("div", { class: "login" }, el("h1", {}, "Picket fleet console"), form));
  user.focus();
}

// ---- charts ------------------------------------------------------------------------------

// Vertical bars: [{label, value, cls}].
function barChart(items, title) {
  const w = 420, h = 190, left = 40, bottom = 30, top = 10;
  const max = Math.max(1, ...items.map((i) => i.value));
  const slot = (w - left - 10) / Math.max(1, items.length);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "aria-label": title });
  chart.append(svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - 5, y2: h - bottom }));
  chart.append(svg("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, String(max)));
  chart.append(svg("text", { x: left - 6, y: h - bottom, "text-anchor": "end" }, "0"));
  items.forEach((item, i) => {
    const bh = ((h - bottom - top) * item.value) / max;
    const x = left + i * slot + slot * 0.2;
    chart.append(svg("rect", {
      class: item.cls, x, y: h - bottom - bh, width: slot * 0.6, height: Math.max(0, bh),
    }, svg("title", {}, `${item.label}: ${item.value}`)));
    chart.append(svg("text", { x: x + slot * 0.3, y: h - bottom + 14, "text-anchor": "middle" },
      item.label));
    chart.append(svg("text", { x: x + slot * 0.3, y: h - bottom - bh - 3, "text-anchor": "middle" },
      String(item.value)));
  });
  return chart;
}

// Alerts of the last 24 hours by hour, stacked by severity.
function timeChart(buckets, nowMs) {
  const w = 640, h = 200, left = 40, bottom = 30, top = 10, hours = 24;
  const hour = 3600000;
  const end = Math.floor(nowMs / hour) * hour;
  const start = end - (hours - 1) * hour;
  const counts = Array.from({ length: hours }, () => ({ medium: 0, high: 0, critical: 0 }));
  for (const b of buckets) {
    const i = Math.round((b.bucket_ms - start) / hour);
    if (i >= 0 && i < hours && SEVERITIES.includes(b.severity)) counts[i][b.severity] += b.count;
  }
  const totals = counts.map((c) => c.medium + c.high + c.critical);
  const max = Math.max(1, ...totals);
  const slot = (w - left - 10) / hours;
  const chart = svg("svg", {
    viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img",
    "aria-label": "Alerts per hour over the last 24 hours, by severity",
  });
  chart.append(svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - 5, y2: h - bottom }));
  chart.append(svg("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, String(max)));
  chart.append(svg("text", { x: left - 6, y: h - bottom, "text-anchor": "end" }, "0"));
  counts.forEach((c, i) => {
    let y = h - bottom;
    const x = left + i * slot + 1;
    for (const sev of SEVERITIES) {
      if (!c[sev]) continue;
      const bh = ((h - bottom - top) * c[sev]) / max;
      y -= bh;
      chart.append(svg("rect", { class: `bar-${sev}`, x, y, width: slot - 2, height: bh },
        svg("title", {}, `${fmtTime(start + i * hour).slice(11, 16)}Z: ${c[sev]} ${sev}`)));
    }
    if (i % 4 === 0 || i === hours - 1) {
      const d = new Date(start + i * hour);
      chart.append(svg("text", { x: x + slot / 2, y: h - bottom + 14, "text-anchor": "middle" },
        `${pad(d.getUTCHours())}:00`));
    }
  });
  return el("div", {}, chart, el("div", { class: "legend" },
    SEVERITIES.map((s) => el("span", { class: `l-${s}` }, s))));
}

// ---- overview ----------------------------------------------------------------------------

async function overviewView() {
  document.title = "Overview · Picket";
  const [overview, devices] = await Promise.all([api("/api/overview"), api("/api/devices")]);
  const byState = overview.devices || {};
  const bySeverity = overview.alerts_by_severity || {};
  const versions = new Map();
  for (const d of devices) {
    const v = d.agent_version || "unknown";
    versions.set(v, (versions.get(v) || 0) + 1);
  }
  const deviceRows = devices.map((d) => el("tr", { "data-device": d.device_id },
    el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id)),
    el("td", {}, stateBadge(d.state)),
    td(d.agent_version),
    td(d.policy_serial === null ? null : `${d.policy_serial}${d.policy_name ? ` (${d.policy_name})` : ""}`),
    el("td", { title: fmtTime(d.last_seen_ms) }, fmtAgo(d.last_seen_ms)),
    td(d.alerts, "num")));
  show(
    el("h1", {}, "Fleet overview"),
    el("div", { class: "cards", id: "overview-cards" },
      STATES.map((s) => el("div", { class: "card", "data-state": s },
        el("div", { class: `value state-${s}` }, String(byState[s] || 0)),
        el("div", { class: "label" }, `devices ${s.replace("_", " ")}`))),
      el("div", { class: "card" },
        el("div", { class: "value", id: "alerts-total" }, String(overview.alerts_total || 0)),
        el("div", { class: "label" }, "alerts stored")),
      SEVERITIES.map((s) => el("div", { class: "card", "data-severity": s },
        el("div", { class: "value" }, String(bySeverity[s] || 0)),
        el("div", { class: "label" }, sevBadge(s))))),
    el("div", { class: "charts" },
      el("div", { class: "panel" }, el("h2", {}, "Alerts over the last 24 hours"),
        timeChart(overview.alerts_over_time || [], Date.now())),
      el("div", { class: "panel" }, el("h2", {}, "Devices by state"),
        barChart(STATES.map((s) => ({ label: s.replace("_", " "), value: byState[s] || 0, cls: `bar-${s}` })),
          "Devices by state"))),
    el("h2", {}, "Agent versions"),
    table(["Version", "#Devices"], [...versions.entries()].sort().map(([v, n]) =>
      el("tr", {}, td(v), td(n, "num")))),
    el("h2", {}, `Devices (${devices.length})`),
    table(["Device", "State", "Agent", "Policy serial", "Last seen", "#Alerts"], deviceRows));
}

// ---- alerts ------------------------------------------------------------------------------

// The filters of the alerts page, kept in the fragment's query (#/alerts?severity=high).
function alertFilters() {
  const i = location.hash.indexOf("?");
  const params = new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : "");
  const f = {};
  for (const k of ["device", "kind", "severity", "since", "until", "q", "triage"]) {
    const v = params.get(k);
    if (v) f[k] = v;
  }
  return f;
}

// datetime-local values are taken as UTC (the console shows UTC throughout).
function toRfc3339(local) {
  return local ? `${local.length === 16 ? `${local}:00` : local}Z` : "";
}

function fromRfc3339(s) {
  return s ? s.replace(/Z$/, "").slice(0, 16) : "";
}

function matchesFilters(row, f) {
  if (f.device && row.device_id !== f.device) return false;
  if (f.kind && row.kind !== f.kind) return false;
  if (f.severity && row.severity !== f.severity) return false;
  if (f.triage && triageState(row) !== f.triage) return false;
  if (f.until) return false; // a live alert is received now, after any `until`
  if (f.q) {
    const hay = [row.path || "", row.rule, row.kind, JSON.stringify(row.details || {})];
    if (!hay.some((s) => s.includes(f.q))) return false;
  }
  return true;
}

function alertRow(row, fresh) {
  return el("tr", { "data-id": row.id, class: fresh ? "new" : null },
    el("td", { title: `device time ${fmtTime(row.time_ms)}` }, fmtTime(row.received_ms)),
    el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(row.device_id)}` }, row.device_id)),
    el("td", {}, sevBadge(row.severity)),
    el("td", {}, el("a", { href: `#/alerts/${row.id}` }, row.kind)),
    td(row.rule),
    el("td", { class: "path" }, row.path === null || row.path === undefined ? "–" : row.path),
    td(row.count, "num"),
    el("td", { class: "triage-cell" }, triageBadge(row)));
}

async function alertsView() {
  document.title = "Alerts · Picket";
  const f = alertFilters();
  const input = (name, attrs) => el("input", Object.assign({ name, value: f[name] || "" }, attrs));
  const select = (name, options, all) => {
    const s = el("select", { name }, el("option", { value: "" }, all),
      options.map((o) => el("option", { value: o }, o)));
    s.value = f[name] || "";
    return s;
  };
  const form = el("form", { class: "filters", id: "alert-filters" },
    el("label", {}, "Device", input("device", { placeholder: "any", size: 14 })),
    el("label", {}, "Kind", select("kind", KINDS, "any")),
    el("label", {}, "Severity", select("severity", SEVERITIES, "any")),
    el("label", {}, "Triage", select("triage", TRIAGE_STATES, "any")),
    el("label", {}, "From (UTC)", el("input", { type: "datetime-local", name: "since", value: fromRfc3339(f.since) })),
    el("label", {}, "To (UTC)", el("input", { type: "datetime-local", name: "until", value: fromRfc3339(f.until) })),
    el("label", {}, "Text", input("q", { placeholder: "path, rule, kind, details", size: 22 })),
    el("button", { type: "submit", class: "primary" }, "Apply"),
    el("button", { type: "button", onclick: () => { location.hash = "#/alerts"; } }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const [k, v] of data.entries()) {
      if (!v) continue;
      next[k] = k === "since" || k === "until" ? toRfc3339(v) : v;
    }
    const q = new URLSearchParams(next).toString();
    location.hash = q ? `#/alerts?${q}` : "#/alerts";
  });

  const live = el("span", { class: "live live-off", id: "live" }, "connecting");
  const tbody = el("tbody", { id: "alert-rows" });
  const status = el("span", { class: "muted", id: "alert-count" });
  const older = el("button", { type: "button", id: "older" }, "Older");
  const message = el("div");
  show(
    el("h1", {}, "Alerts", live),
    form,
    message,
    el("table", { id: "alerts" },
      el("thead", {}, el("tr", {}, ["Received", "Device", "Severity", "Kind", "Rule", "Path", "Count", "Triage"]
        .map((h) => el("th", { class: h === "Count" ? "num" : null }, h)))),
      tbody),
    el("div", { class: "toolbar" }, older, status));

  const shown = new Set();
  let lowest = null;
  const params = {
    device: f.device, kind: f.kind, severity: f.severity, since: f.since, until: f.until,
    q: f.q, triage: f.triage, limit: PAGE,
  };
  const updateStatus = () => {
    status.textContent = `${shown.size} alert(s) shown`;
  };
  const load = async () => {
    older.disabled = true;
    try {
      const rows = await api(`/api/alerts${query(Object.assign({}, params, { before: lowest }))}`);
      for (const row of rows) {
        if (shown.has(row.id)) continue;
        shown.add(row.id);
        tbody.append(alertRow(row, false));
        if (lowest === null || row.id < lowest) lowest = row.id;
      }
      older.hidden = rows.length < PAGE;
      updateStatus();
    } finally {
      older.disabled = false;
    }
  };
  older.addEventListener("click", () => load().catch((e) => append(clear(message), errorBox(e))));
  await load();

  // Live updates: new alerts that match the filters go on top; triage changes update rows.
  const events = new EventSource("/api/events");
  cleanup.push(() => events.close());
  events.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "live live-on";
  });
  events.addEventListener("error", () => {
    live.textContent = "reconnecting";
    live.className = "live live-off";
  });
  events.addEventListener("alert", (event) => {
    let row;
    try {
      row = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (shown.has(row.id) || !matchesFilters(row, f)) return;
    shown.add(row.id);
    tbody.prepend(alertRow(row, true));
    updateStatus();
  });
  events.addEventListener("triage", (event) => {
    let change;
    try {
      change = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    const tr = tbody.querySelector(`tr[data-id="${Number(change.id)}"]`);
    if (tr) {
      const cell = tr.querySelector(".triage-cell");
      append(clear(cell), triageBadge({ triage: change.triage }));
    }
  });
}

// ---- alert detail ------------------------------------------------------------------------

// The process and its ancestors, drawn as a chain of boxes from the oldest ancestor down.
function processTree(process) {
  const nodes = [...(process.ancestry || [])].reverse().map((a) => ({ pid: a.pid, exe: a.exe }));
  nodes.push({ pid: process.pid, exe: process.exe, self: true });
  const rowH = 46, boxH = 34, indent = 26, boxW = 520;
  const w = indent * nodes.length + boxW + 10;
  const h = rowH * nodes.length + 4;
  const chart = svg("svg", {
    class: "tree", id: "process-tree", width: w, height: h, viewBox: `0 0 ${w} ${h}`,
    role: "img", "aria-label": "Process ancestry",
  });
  nodes.forEach((n, i) => {
    const x = 4 + i * indent, y = 2 + i * rowH;
    if (i > 0) {
      const px = 4 + (i - 1) * indent + 10;
      chart.append(svg("line", { x1: px, y1: y - rowH + boxH, x2: px, y2: y + boxH / 2 }));
      chart.append(svg("line", { x1: px, y1: y + boxH / 2, x2: x, y2: y + boxH / 2 }));
    }
    chart.append(svg("rect", { class: n.self ? "self" : null, x, y, width: boxW, height: boxH, rx: 3 }));
    chart.append(svg("text", { x: x + 8, y: y + 14 },
      `pid ${n.pid === null || n.pid === undefined ? "?" : n.pid}${n.self ? " (the alert's process)" : ""}`));
    chart.append(svg("text", { x: x + 8, y: y + 28, class: "exe" }, n.exe || "(executable unknown)"));
  });
  return el("div", { class: "tree" }, chart);
}

function processFacts(p) {
  const argv = (p.argv || []).join(" ") + (p.argv_dropped ? ` … (${p.argv_dropped} more)` : "");
  return el("dl", { class: "facts" },
    el("dt", {}, "Executable"), el("dd", { class: "path" }, p.exe || "–"),
    el("dt", {}, "Arguments"), el("dd", { class: "path", id: "process-argv" }, argv || "–"),
    el("dt", {}, "PID / parent"), el("dd", {}, `${p.pid ?? "–"} / ${p.ppid ?? "–"}`),
    el("dt", {}, "UID"), el("dd", {}, p.uid ?? "–"),
    el("dt", {}, "SHA-256"), el("dd", { class: "path" }, p.sha256 || "–"),
    el("dt", {}, "cgroup id"), el("dd", {}, p.cgroup_id ?? "–"));
}

function triagePanel(row, onChange) {
  const t = row.triage;
  const panel = el("div", { class: "panel", id: "triage" }, el("h2", {}, "Triage"),
    el("p", {}, "State: ", triageBadge(row),
      t ? ` by ${t.by} at ${fmtTime(t.time_ms)}` : ""),
    t && t.note ? el("p", {}, "Note: ", el("span", { id: "triage-note" }, t.note)) : null);
  if (!isRole("operator", "admin")) return panel;
  const note = el("textarea", { id: "triage-note-input", rows: 2, cols: 50, placeholder: "note" });
  const message = el("p", { class: "error", role: "alert" });
  const set = async (state) => {
    message.textContent = "";
    try {
      await api(`/api/alerts/${row.id}/triage`, { method: "POST", body: { state, note: note.value } });
      onChange();
    } catch (e) {
      message.textContent = e.message;
    }
  };
  append(panel, [
    el("label", {}, "Note ", note),
    el("div", { class: "toolbar" },
      el("button", { type: "button", id: "triage-acknowledge", onclick: () => set("acknowledged") }, "Acknowledge"),
      el("button", { type: "button", id: "triage-resolve", onclick: () => set("resolved") }, "Resolve"),
      triageState(row) !== "open"
        ? el("button", { type: "button", id: "triage-reopen", onclick: () => set("open") }, "Reopen")
        : null),
    message]);
  return panel;
}

async function alertView(id) {
  document.title = `Alert ${id} · Picket`;
  const row = await api(`/api/alerts/${encodeURIComponent(id)}`);
  const { ocsf, ...raw } = row;
  show(
    el("p", {}, el("a", { href: "#/alerts" }, "← Alerts")),
    el("h1", {}, sevBadge(row.severity), " ", row.kind, " ",
      el("span", { class: "muted" }, `on ${row.device_id}, #${row.seq}`)),
    el("div", { class: "columns" },
      el("div", {},
        el("div", { class: "panel" },
          el("dl", { class: "facts", id: "alert-facts" },
            el("dt", {}, "Rule"), el("dd", { id: "alert-rule" }, row.rule),
            el("dt", {}, "Path"), el("dd", { class: "path", id: "alert-path" }, row.path ?? "–"),
            el("dt", {}, "Device"), el("dd", {},
              el("a", { href: `#/devices/${encodeURIComponent(row.device_id)}` }, row.device_id)),
            el("dt", {}, "Raised"), el("dd", {}, `${fmtTime(row.time_ms)} (device clock)`),
            el("dt", {}, "Received"), el("dd", {}, fmtTime(row.received_ms)),
            el("dt", {}, "Occurrences"), el("dd", {},
              row.count > 1 ? `${row.count}, ${fmtTime(row.first_ms)} to ${fmtTime(row.last_ms)}` : "1"),
            el("dt", {}, "Details"), el("dd", {}, el("pre", {}, JSON.stringify(row.details, null, 2))))),
        triagePanel(row, () => route())),
      el("div", {},
        el("div", { class: "panel" }, el("h2", {}, "Process"),
          row.process ? [processTree(row.process), processFacts(row.process)]
            : el("p", { class: "muted" }, "No process context.")))),
    el("div", { class: "columns" },
      el("div", {}, el("h2", {}, "Raw JSON"), el("pre", { id: "raw-json" }, JSON.stringify(raw, null, 2))),
      el("div", {}, el("h2", {}, "OCSF"), el("pre", { id: "ocsf-json" }, JSON.stringify(ocsf, null, 2)))));
}

// ---- device ------------------------------------------------------------------------------

// Each alert a dot on a time line (by time received), each gap between stored sequence numbers
// marked where the alerts around it lie.
function deviceTimeline(alerts) {
  const w = 900, h = 90, left = 10, right = 10;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "aria-label": "Alert timeline", id: "timeline" });
  if (alerts.length === 0) return el("p", { class: "muted" }, "No alerts stored.");
  const times = alerts.map((a) => a.received_ms);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const x = (t) => left + ((w - left - right) * (t - t0)) / (t1 - t0);
  const lane = { medium: 60, high: 40, critical: 20 };
  chart.append(svg("line", { class: "axis", x1: left, y1: 72, x2: w - right, y2: 72 }));
  for (const a of alerts) {
    const sev = SEVERITIES.includes(a.severity) ? a.severity : "medium";
    chart.append(svg("circle", { class: `bar-${sev}`, cx: x(a.received_ms), cy: lane[sev], r: 4 },
      svg("title", {}, `${fmtTime(a.received_ms)} ${a.kind}`)));
  }
  chart.append(svg("text", { x: left, y: 86 }, fmtTime(t0)));
  chart.append(svg("text", { x: w - right, y: 86, "text-anchor": "end" }, fmtTime(t1)));
  return chart;
}

async function deviceView(id) {
  document.title = `${id} · Picket`;
  const [devices, gaps, alerts] = await Promise.all([
    api("/api/devices"),
    api(`/api/devices/${encodeURIComponent(id)}/gaps`),
    api(`/api/alerts${query({ device: id, limit: 500 })}`),
  ]);
  const d = devices.find((x) => x.device_id === id);
  if (!d) {
    show(el("h1", {}, id), el("p", { class: "error" }, "No such device."));
    return;
  }
  const c = d.counters || {};
  const lost = (c.sensors || []).map((s) => `${s.sensor}: ${s.lost} of ${s.seen}`).join(", ");
  show(
    el("h1", {}, d.device_id, " ", stateBadge(d.state)),
    el("div", { class: "columns" },
      el("div", { class: "panel" }, el("h2", {}, "Device"),
        el("dl", { class: "facts" },
          el("dt", {}, "Agent version"), el("dd", {}, d.agent_version || "–"),
          el("dt", {}, "Policy"), el("dd", {}, d.policy_serial === null ? "–" : `${d.policy_name || ""} serial ${d.policy_serial}`),
          el("dt", {}, "Boot id"), el("dd", {}, d.boot_id || "–"),
          el("dt", {}, "First seen"), el("dd", {}, fmtTime(d.first_seen_ms)),
          el("dt", {}, "Last seen"), el("dd", {}, `${fmtTime(d.last_seen_ms)} (${fmtAgo(d.last_seen_ms)})`),
          el("dt", {}, "Alerts stored"), el("dd", {}, d.alerts),
          el("dt", {}, "Over rate limit"), el("dd", {}, d.rate_limited),
          el("dt", {}, "Removed over quota"), el("dd", {}, d.quota_removed))),
      el("div", { class: "panel", id: "heartbeat" }, el("h2", {}, "Latest heartbeat"),
        d.heartbeat_ms ? el("dl", { class: "facts" },
          el("dt", {}, "At"), el("dd", {}, `${fmtTime(d.heartbeat_ms)} (${fmtAgo(d.heartbeat_ms)})`),
          el("dt", {}, "Uptime"), el("dd", {}, d.uptime_s === null ? "–" : `${d.uptime_s} s`),
          el("dt", {}, "Memory (RSS)"), el("dd", { id: "hb-rss" }, fmtBytes(c.rss_bytes)),
          el("dt", {}, "Lost events"), el("dd", { id: "hb-lost" }, lost || "–"),
          el("dt", {}, "Spool"), el("dd", { id: "hb-spool" },
            c.spool_pending === undefined ? "–" : `${c.spool_pending} alert(s), ${fmtBytes(c.spool_bytes)}`),
          el("dt", {}, "Unverified execs"), el("dd", {}, c.exec_unverified ?? "unknown"))
          : el("p", { class: "muted" }, "No heartbeat received."))),
    el("h2", {}, `Alert timeline (latest ${alerts.length})`),
    el("div", { class: "panel" }, deviceTimeline(alerts),
      el("div", { class: "legend" }, SEVERITIES.map((s) => el("span", { class: `l-${s}` }, s)))),
    el("h2", {}, "Gaps and restarts"),
    gaps.length === 0 ? el("p", { class: "muted", id: "gaps" }, "No sequence numbers missing.")
      : table(["First missing", "Last missing", "#Missing", "Cause"], gaps.map((g) => el("tr", {},
        td(g.first_missing), td(g.last_missing), td(g.missing, "num"),
        td(g.restart ? "agent restart" : g.rate_limited ? `${g.rate_limited} over the rate limit` : "lost")))),
    el("h2", {}, "Alerts"),
    el("table", {},
      el("thead", {}, el("tr", {}, ["Received", "Device", "Severity", "Kind", "Rule", "Path", "Count", "Triage"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, alerts.slice(0, 100).map((a) => alertRow(a, false)))));
}

// ---- policies ----------------------------------------------------------------------------

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function pushForm(devices) {
  const file = el("input", { type: "file", id: "push-bundle", required: true });
  const boxes = devices.map((d) => el("label", {},
    el("input", { type: "checkbox", name: "device", value: d.device_id }), ` ${d.device_id}`));
  const message = el("p", { role: "status", id: "push-result" });
  const form = el("form", { class: "stack panel", id: "push-form" },
    el("h2", {}, "Push a signed bundle"),
    el("label", {}, "Bundle file", file),
    el("fieldset", {}, el("legend", {}, "Devices"), boxes),
    el("button", { type: "submit", class: "primary" }, "Push"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    const chosen = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (!file.files.length || chosen.length === 0) {
      message.textContent = "Choose a bundle file and at least one device.";
      return;
    }
    const bytes = new Uint8Array(await file.files[0].arrayBuffer());
    try {
      const r = await api("/api/policy/push", { method: "POST", body: { bundle: base64(bytes), devices: chosen } });
      message.textContent = `Serial ${r.serial} published to ${r.devices.join(", ")}; results appear below as devices answer.`;
    } catch (e) {
      message.textContent = e.message;
    }
  });
  return form;
}

async function policiesView() {
  document.title = "Policies · Picket";
  const [devices, results, refused] = await Promise.all([
    api("/api/devices"), api("/api/policy-results"), api("/api/refused"),
  ]);
  show(
    el("h1", {}, "Policies"),
    isRole("admin") ? pushForm(devices) : null,
    el("h2", {}, "Serial running on each device"),
    table(["Device", "State", "Policy", "Serial"], devices.map((d) => el("tr", {},
      el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id)),
      el("td", {}, stateBadge(d.state)), td(d.policy_name), td(d.policy_serial, "num")))),
    el("h2", {}, "Push results"),
    results.length === 0 ? el("p", { class: "muted" }, "No results yet.")
      : table(["Time", "Device", "Outcome", "Policy", "Serial", "Reason", "Bundle SHA-256"],
        results.map((r) => el("tr", {}, td(fmtTime(r.received_ms)), td(r.device_id),
          td(r.outcome, r.outcome === "refused" ? "error" : null), td(r.name), td(r.serial, "num"),
          td(r.reason), td(r.bundle_sha256.slice(0, 16), "path")))),
    el("h2", {}, "Refused messages"),
    refused.length === 0 ? el("p", { class: "muted" }, "None.")
      : table(["Reason", "Device", "#Count", "Last", "Last error"], refused.map((r) => el("tr", {},
        td(r.reason), td(r.device_id || "–"), td(r.count, "num"), td(fmtTime(r.last_ms)), td(r.last_error, "path")))));
}

// ---- audit -------------------------------------------------------------------------------

async function auditView() {
  document.title = "Audit · Picket";
  const rows = await api("/api/audit");
  show(
    el("h1", {}, "Audit log"),
    rows.length === 0 ? el("p", { class: "muted" }, "Nothing recorded yet.")
      : table(["Time", "User", "Action", "Target", "Detail"], rows.map((r) => el("tr", {},
        td(fmtTime(r.time_ms)), td(r.user), td(r.action), td(r.target, "path"),
        td(typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail))))));
}

// ---- start -------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", logout);
  route();
});
