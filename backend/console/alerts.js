// The alerts page (filters, live updates, pagination) and an alert's page (process tree, raw
// and OCSF forms, triage).

import { SEVERITIES, TRIAGE_STATES, KINDS, PAGE, view, el, append, clear, show, td, fmtTime, sevBadge, triageState, triageBadge } from "./dom.js";
import { api, query, errorBox, isRole } from "./api.js";
import { processTree } from "./charts.js";

// The filters of the alerts page, kept in the fragment's query (#/alerts?severity=high).
export function alertFilters() {
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
export function toRfc3339(local) {
  return local ? `${local.length === 16 ? `${local}:00` : local}Z` : "";
}

export function fromRfc3339(s) {
  return s ? s.replace(/Z$/, "").slice(0, 16) : "";
}

export function matchesFilters(row, f) {
  if (f.device && row.device_id !== f.device) return false;
  if (f.kind && row.kind !== f.kind) return false;
  if (f.severity && row.severity !== f.severity) return false;
  if (f.triage && triageState(row) !== f.triage) return false;
  if (f.until) return false; // a live alert is received now, after any `until`
  if (f.q) {
    const q = f.q.toLowerCase();
    const hay = [row.path || "", row.rule, row.kind, JSON.stringify(row.details || {})];
    if (!hay.some((s) => s.toLowerCase().includes(q))) return false;
  }
  return true;
}

export function alertRow(row, fresh) {
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

export async function alertsView() {
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

  const shown = new Set();
  // The cursor: the last row of the pages read (the API's order: newest received first).
  let last = null;
  const params = {
    device: f.device, kind: f.kind, severity: f.severity, since: f.since, until: f.until,
    q: f.q, triage: f.triage, limit: PAGE,
  };
  const updateStatus = () => {
    status.textContent = `${shown.size} alert(s) shown`;
  };
  const addLive = (row) => {
    if (shown.has(row.id) || !matchesFilters(row, f)) return;
    shown.add(row.id);
    tbody.prepend(alertRow(row, true));
    updateStatus();
  };
  const setTriage = (change) => {
    const tr = tbody.querySelector(`tr[data-id="${Number(change.id)}"]`);
    if (tr) append(clear(tr.querySelector(".triage-cell")), triageBadge({ triage: change.triage }));
  };
  // The next older page (the first when nothing is shown).
  const loadOlder = async () => {
    older.disabled = true;
    try {
      const rows = await api(`/api/alerts${query(Object.assign({}, params, { before: last }))}`);
      for (const row of rows) {
        last = row.id;
        if (shown.has(row.id)) continue;
        shown.add(row.id);
        tbody.append(alertRow(row, false));
      }
      older.hidden = rows.length < PAGE;
      updateStatus();
    } finally {
      older.disabled = false;
    }
  };
  // After the stream was interrupted: the newest page again, for what was stored meanwhile.
  const catchUp = async () => {
    const rows = await api(`/api/alerts${query(params)}`);
    for (const row of rows.reverse()) addLive(row);
  };
  older.addEventListener("click", () => loadOlder().catch((e) => append(clear(message), errorBox(e))));

  // Live updates. The stream is opened before the first page is read, and what it brings
  // meanwhile is applied after, so that no alert stored in between is missed (rows are told
  // apart by id: one that is on the page already is not added again).
  const events = new EventSource("/api/events");
  view.cleanup.push(() => events.close());
  let loaded = false;
  let interrupted = false;
  const pending = [];
  const opened = new Promise((resolve) => {
    events.addEventListener("open", resolve, { once: true });
    events.addEventListener("error", resolve, { once: true });
  });
  events.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "live live-on";
    if (interrupted && loaded) catchUp().catch((e) => append(clear(message), errorBox(e)));
    interrupted = false;
  });
  events.addEventListener("error", () => {
    live.className = "live live-off";
    interrupted = true;
    if (events.readyState !== EventSource.CLOSED) {
      live.textContent = "reconnecting";
      return;
    }
    // Refused, not interrupted (the browser does not retry): a session that ended goes to the
    // login page; anything else is said.
    live.textContent = "stopped";
    api("/api/me").then(() => {
      live.textContent = "stopped: reload the page";
    }, () => {});
  });
  for (const [name, apply] of [["alert", addLive], ["triage", setTriage]]) {
    events.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (loaded) apply(data);
      else pending.push(() => apply(data));
    });
  }
  await opened;
  await loadOlder();
  loaded = true;
  for (const apply of pending) apply();
  pending.length = 0;

  return [
    el("h1", {}, "Alerts", live),
    form,
    message,
    el("table", { id: "alerts" },
      el("thead", {}, el("tr", {}, ["Received", "Device", "Severity", "Kind", "Rule", "Path", "Count", "Triage"]
        .map((h) => el("th", { class: h === "Count" ? "num" : null }, h)))),
      tbody),
    el("div", { class: "toolbar" }, older, status),
  ];
}


export function processFacts(p) {
  const argv = (p.argv || []).join(" ") + (p.argv_dropped ? ` … (${p.argv_dropped} more)` : "");
  return el("dl", { class: "facts" },
    el("dt", {}, "Executable"), el("dd", { class: "path" }, p.exe || "–"),
    el("dt", {}, "Arguments"), el("dd", { class: "path", id: "process-argv" }, argv || "–"),
    el("dt", {}, "PID / parent"), el("dd", {}, `${p.pid ?? "–"} / ${p.ppid ?? "–"}`),
    el("dt", {}, "UID"), el("dd", {}, p.uid ?? "–"),
    el("dt", {}, "SHA-256"), el("dd", { class: "path" }, p.sha256 || "–"),
    el("dt", {}, "cgroup id"), el("dd", {}, p.cgroup_id ?? "–"));
}

export function triagePanel(row, onChange) {
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

export async function alertView(id) {
  document.title = `Alert ${id} · Picket`;
  const row = await api(`/api/alerts/${encodeURIComponent(id)}`);
  const { ocsf, ...raw } = row;
  const here = location.hash;
  const refresh = () => alertView(id).then(
    (content) => { if (location.hash === here) show(content); },
    (e) => { if (location.hash === here) show(errorBox(e)); });
  return [
    el("p", {}, el("a", { href: "#/alerts" }, "← Alerts")),
    el("h1", {}, sevBadge(row.severity), " ", row.kind, " ",
      el("span", { class: "muted" }, row.format === "backend"
        ? `on ${row.device_id}, raised by the backend`
        : `on ${row.device_id}, #${row.seq}`)),
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
        triagePanel(row, refresh)),
      el("div", {},
        el("div", { class: "panel" }, el("h2", {}, "Process"),
          row.process ? [processTree(row.process), processFacts(row.process)]
            : el("p", { class: "muted" }, "No process context.")))),
    el("div", { class: "columns" },
      el("div", {}, el("h2", {}, "Raw JSON"), el("pre", { id: "raw-json" }, JSON.stringify(raw, null, 2))),
      el("div", {}, el("h2", {}, "OCSF"), el("pre", { id: "ocsf-json" }, JSON.stringify(ocsf, null, 2)))),
  ];
}

