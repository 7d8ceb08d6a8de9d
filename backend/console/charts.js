// Charts drawn as inline SVG: bars, alerts over time, a process's ancestry, a device's timeline.

import { SEVERITIES, el, svg, fmtTime, pad } from "./dom.js";

// Vertical bars: [{label, value, cls}].
export function barChart(items, title) {
  const w = 420, h = 190, left = 40, bottom = 30, top = 18;
  const max = Math.max(1, ...items.map((i) => i.value));
  const slot = (w - left - 10) / Math.max(1, items.length);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, class: "chart", role: "img", "aria-label": title });
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
export function timeChart(buckets, nowMs) {
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
    viewBox: `0 0 ${w} ${h}`, width: w, class: "chart", role: "img",
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



// The process and its ancestors, drawn as a chain of boxes from the oldest ancestor down.
export function processTree(process) {
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



// Each alert a dot on a time line (by time received), each gap between stored sequence numbers
// marked where the alerts around it lie.
export function deviceTimeline(alerts, gaps) {
  if (alerts.length === 0) return el("p", { class: "muted" }, "No alerts stored.");
  const w = 900, h = 90, left = 10, right = 10;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "aria-label": "Alert timeline", id: "timeline" });
  const times = alerts.map((a) => a.received_ms);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const x = (t) => left + ((w - left - right) * (t - t0)) / (t1 - t0);
  const lane = { medium: 60, high: 40, critical: 20 };
  chart.append(svg("line", { class: "axis", x1: left, y1: 72, x2: w - right, y2: 72 }));
  // A gap between two stored alerts is marked between them (when both are on the chart).
  const bySeq = new Map(alerts.map((a) => [a.seq, a]));
  for (const g of gaps) {
    const before = bySeq.get(g.first_missing - 1), after = bySeq.get(g.last_missing + 1);
    if (!before || !after) continue;
    const gx = (x(before.received_ms) + x(after.received_ms)) / 2;
    chart.append(svg("rect", {
      class: `gap ${g.restart || g.reset ? "gap-restart" : "gap-loss"}`, x: gx - 1.5, y: 10, width: 3, height: 62,
    }, svg("title", {}, g.reset ? "counter reset"
      : `${g.missing} missing (${g.first_missing}-${g.last_missing})${g.restart ? ": agent restart" : ""}`)));
  }
  for (const a of alerts) {
    const sev = SEVERITIES.includes(a.severity) ? a.severity : "medium";
    chart.append(svg("circle", { class: `bar-${sev}`, cx: x(a.received_ms), cy: lane[sev], r: 4 },
      svg("title", {}, `${fmtTime(a.received_ms)} ${a.kind}`)));
  }
  chart.append(svg("text", { x: left, y: 86 }, fmtTime(t0)));
  chart.append(svg("text", { x: w - right, y: 86, "text-anchor": "end" }, fmtTime(t1)));
  return chart;
}


// Alerts of the last 24 hours by kind (most first), each bar stacked by severity.
export function kindChart(buckets) {
  const byKind = new Map();
  for (const b of buckets) {
    if (!SEVERITIES.includes(b.severity)) continue;
    const k = byKind.get(b.kind) || { medium: 0, high: 0, critical: 0, total: 0 };
    k[b.severity] += b.count;
    k.total += b.count;
    byKind.set(b.kind, k);
  }
  if (byKind.size === 0) return el("p", { class: "muted" }, "No alerts in the last 24 hours.");
  const kinds = [...byKind.entries()].sort((a, b) => b[1].total - a[1].total || a[0].localeCompare(b[0]));
  const w = 640, rowH = 22, left = 190, right = 50;
  const h = rowH * kinds.length + 4;
  const max = Math.max(...kinds.map(([, k]) => k.total));
  const chart = svg("svg", {
    viewBox: `0 0 ${w} ${h}`, width: w, class: "chart", role: "img", id: "kind-chart",
    "aria-label": "Alerts of the last 24 hours by kind and severity",
  });
  kinds.forEach(([kind, k], i) => {
    const y = 2 + i * rowH;
    chart.append(svg("text", { x: left - 8, y: y + 14, "text-anchor": "end" }, kind));
    let x = left;
    for (const sev of SEVERITIES) {
      if (!k[sev]) continue;
      const bw = ((w - left - right) * k[sev]) / max;
      chart.append(svg("rect", { class: `bar-${sev}`, x, y: y + 3, width: bw, height: rowH - 6 },
        svg("title", {}, `${kind}: ${k[sev]} ${sev}`)));
      x += bw;
    }
    chart.append(svg("text", { x: x + 6, y: y + 14 }, String(k.total)));
  });
  return chart;
}
