// The login, overview, device, policies and audit pages.

import { SEVERITIES, STATES, view, el, table, td, fmtTime, fmtAgo, fmtBytes, sevBadge, stateBadge } from "./dom.js";
import { api, query, isRole, session } from "./api.js";
import { barChart, timeChart, kindChart, deviceTimeline } from "./charts.js";
import { alertRow } from "./alerts.js";

// ---- login -------------------------------------------------------------------------------

export function loginView() {
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
      session.me = await api("/api/login", {
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
  user.setAttribute("autofocus", "");
  return el("div", { class: "login" }, el("h1", {}, "Picket fleet console"), form);
}


// ---- overview ----------------------------------------------------------------------------

export async function overviewView() {
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
  return [
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
      el("div", { class: "panel small" }, el("h2", {}, "Devices by state"),
        barChart(STATES.map((s) => ({ label: s.replace("_", " "), value: byState[s] || 0, cls: `bar-${s}` })),
          "Devices by state")),
      el("div", { class: "panel" }, el("h2", {}, "Alerts of the last 24 hours by kind"),
        kindChart(overview.alerts_over_time || []))),
    el("h2", {}, "Agent versions"),
    table(["Version", "#Devices"], [...versions.entries()].sort().map(([v, n]) =>
      el("tr", {}, td(v), td(n, "num")))),
    el("h2", {}, `Devices (${devices.length})`),
    table(["Device", "State", "Agent", "Policy serial", "Last seen", "#Alerts"], deviceRows)];
}


// What a gap is, in the words of `picket-backend gaps`.
function gapCause(g) {
  if (g.reset) return "counter reset";
  if (g.restart) return "agent restart";
  if (!g.rate_limited) return "lost";
  return g.rate_limited === g.missing ? "rate limited" : `lost (${g.rate_limited} rate limited)`;
}

export async function deviceView(id) {
  document.title = `${id} · Picket`;
  const [devices, gaps, alerts] = await Promise.all([
    api("/api/devices"),
    api(`/api/devices/${encodeURIComponent(id)}/gaps`),
    api(`/api/alerts${query({ device: id, limit: 500 })}`),
  ]);
  const d = devices.find((x) => x.device_id === id);
  if (!d) {
    return [el("h1", {}, id), el("p", { class: "error" }, "No such device.")];
  }
  const c = d.counters || {};
  const lost = (c.sensors || []).map((s) => `${s.sensor}: ${s.lost} of ${s.seen}`).join(", ");
  return [
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
          el("dt", {}, "Removed over quota"), el("dd", {}, d.quota_removed),
          el("dt", {}, "Heartbeats and statuses over limit"), el("dd", {}, d.presence_limited))),
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
    el("div", { class: "panel" }, deviceTimeline(alerts, gaps),
      el("div", { class: "legend" }, SEVERITIES.map((s) => el("span", { class: `l-${s}` }, s)),
        el("span", { class: "l-gap-loss" }, "gap"), el("span", { class: "l-gap-restart" }, "agent restart or counter reset"))),
    el("h2", {}, "Gaps and restarts"),
    gaps.length === 0 ? el("p", { class: "muted", id: "gaps" }, "No sequence numbers missing.")
      : el("table", { id: "gaps" }, el("thead", {}, el("tr", {}, ["First missing", "Last missing", "Missing", "Cause"]
        .map((h) => el("th", { class: h === "Missing" ? "num" : null }, h)))), el("tbody", {}, gaps.map((g) => el("tr", {},
        td(g.first_missing), td(g.last_missing), td(g.missing, "num"),
        td(gapCause(g)))))),
    el("h2", {}, "Alerts"),
    el("table", {},
      el("thead", {}, el("tr", {}, ["Received", "Device", "Severity", "Kind", "Rule", "Path", "Count", "Triage"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, alerts.slice(0, 100).map((a) => alertRow(a, false))))];
}


// ---- policies ----------------------------------------------------------------------------

export function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function pushForm(devices) {
  const file = el("input", { type: "file", id: "push-bundle", required: true });
  const boxes = devices.map((d) => el("label", {},
    el("input", { type: "checkbox", name: "device", value: d.device_id }), ` ${d.device_id}`));
  const message = el("p", { role: "status", id: "push-result" });
  const form = el("form", { class: "stack panel", id: "push-form" },
    el("h2", {}, "Push a signed bundle"),
    el("label", {}, "Bundle file", file),
    el("fieldset", { class: "checks" }, el("legend", {}, "Devices"), boxes),
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
      const refused = Object.entries(r.refused || {});
      message.textContent = `Serial ${r.serial} published to ${r.devices.join(", ")}` +
        (refused.length ? `; the broker refused it for ${refused.map(([d, why]) => `${d} (${why})`).join(", ")}` : "") +
        ". Each device's result appears below when it answers.";
    } catch (e) {
      message.textContent = e.message;
    }
  });
  return form;
}

function serialRow(d) {
  return el("tr", { "data-device": d.device_id },
    el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id)),
    el("td", {}, stateBadge(d.state)), td(d.policy_name, "policy-name"), td(d.policy_serial, "num policy-serial"));
}

function resultRow(r) {
  return el("tr", { "data-device": r.device_id }, td(fmtTime(r.received_ms)), td(r.device_id),
    td(r.outcome, r.outcome === "refused" ? "error" : null), td(r.name), td(r.serial, "num"),
    td(r.reason), td(r.bundle_sha256.slice(0, 16), "path"));
}

const resultKey = (r) => `${r.device_id} ${r.bundle_sha256} ${r.time_ms}`;

export async function policiesView() {
  document.title = "Policies · Picket";
  // The stream is opened before the results are read, and what it brings meanwhile applied
  // after: no result stored in between is missed (one already shown is not added again).
  const events = new EventSource("/api/events");
  view.cleanup.push(() => events.close());
  await new Promise((resolve) => {
    events.addEventListener("open", resolve, { once: true });
    events.addEventListener("error", resolve, { once: true });
  });
  const pending = [];
  let apply = (r) => pending.push(r);
  events.addEventListener("policy_result", (event) => {
    try {
      apply(JSON.parse(event.data));
    } catch (_) {
      // Not JSON: nothing to show.
    }
  });
  const [devices, results, refused] = await Promise.all([
    api("/api/devices"), api("/api/policy-results"), api("/api/refused"),
  ]);
  const serials = table(["Device", "State", "Policy", "#Serial"], devices.map(serialRow), "policy-serials");
  const none = el("p", { class: "muted" }, "No results yet.");
  const resultTable = table(["Time", "Device", "Outcome", "Policy", "#Serial", "Reason", "Bundle SHA-256"],
    results.map(resultRow), "policy-results");
  none.hidden = results.length > 0;
  resultTable.hidden = results.length === 0;
  // A result as it arrives: on top of the results, and the serial the device now runs.
  const shown = new Set(results.map(resultKey));
  apply = (r) => {
    if (shown.has(resultKey(r))) return;
    shown.add(resultKey(r));
    resultTable.querySelector("tbody").prepend(resultRow(r));
    none.hidden = true;
    resultTable.hidden = false;
    const row = serials.querySelector(`tr[data-device="${CSS.escape(r.device_id)}"]`);
    if (row && r.serial !== null && r.outcome !== "refused") {
      row.querySelector(".policy-serial").textContent = r.serial;
      if (r.name !== null) row.querySelector(".policy-name").textContent = r.name;
    }
  };
  for (const r of pending) apply(r);
  return [
    el("h1", {}, "Policies"),
    isRole("admin") ? pushForm(devices) : null,
    el("h2", {}, "Serial running on each device"),
    serials,
    el("h2", {}, "Push results"),
    none,
    resultTable,
    el("h2", {}, "Refused messages"),
    refused.length === 0 ? el("p", { class: "muted" }, "None.")
      : table(["Reason", "Device", "#Count", "Last", "Last error"], refused.map((r) => el("tr", {},
        td(r.reason), td(r.device_id || "–"), td(r.count, "num"), td(fmtTime(r.last_ms)), td(r.last_error, "path"))), "refused")];
}

// ---- audit -------------------------------------------------------------------------------

export async function auditView() {
  document.title = "Audit · Picket";
  const rows = await api("/api/audit");
  return [
    el("h1", {}, "Audit log"),
    rows.length === 0 ? el("p", { class: "muted" }, "Nothing recorded yet.")
      : table(["Time", "User", "Action", "Target", "Detail"], rows.map((r) => el("tr", {},
        td(fmtTime(r.time_ms)), td(r.user), td(r.action), td(r.target, "path"),
        td(typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail)))))];
}

