/* fleetpulse dashboard: plain JavaScript, no build step. Live values come from the hub's
   Server-Sent Events stream (/api/stream); history from /api/devices/{id}/series. */
"use strict";

const state = {
  token: localStorage.getItem("fleetpulse.token") || "",
  devices: [],          // newest event's devices
  sort: { key: "device_id", dir: 1 },
  view: null,           // "fleet" | "device"
  device: null,         // device id on the device page
  range: "live",        // "live" | seconds | "custom"
  custom: null,         // { start: Date, end: Date } of the custom range
  live: null,           // rolling 60 s buffers on the device page
  charts: {},
  anomalies: {},        // device id → its anomaly model's state and rate (/api/anomalies)
  band: null,           // { t, rate, max, step_s } of the device page's range
  source: null,         // EventSource
  timers: [],
  procs: { sample: null, at: null, sort: { key: "cpu", dir: -1 }, loading: false },
};
window.fleetpulse = state;  // for the browser tests and curious operators

const $ = (sel) => document.querySelector(sel);
const LIVE_WINDOW_S = 60;
const ANOMALY_THRESHOLD = 0.5;  // the anomaly rule's default threshold (hub/alerts.py)
const CHART_HEIGHT = 180;

// --- formatting ---------------------------------------------------------------------------
function num(v, digits = 1) { return v === null || v === undefined ? "–" : v.toFixed(digits); }
function bytesPerS(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function throttling(latest) {
  if (!latest || latest.throttling_raw === null || latest.throttling_raw === undefined) return "–";
  const now = [];
  if (latest.throttling_under_voltage_now) now.push("under-voltage");
  if (latest.throttling_throttled_now) now.push("throttled");
  if (latest.throttling_freq_capped_now) now.push("capped");
  if (latest.throttling_soft_temp_limit_now) now.push("soft limit");
  if (now.length) return now.join(", ");
  return latest.throttling_raw ? `ok (0x${latest.throttling_raw.toString(16)})` : "ok";
}
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

// --- API ----------------------------------------------------------------------------------
function withToken(url) {
  if (!state.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(state.token);
}
async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) { askToken(); throw new Error("a token is needed"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}
function askToken() {
  $("#token-form").hidden = false;
  $("#fleet-view").hidden = true;
  $("#device-view").hidden = true;
}
$("#token-submit").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("#token-input").value.trim();
  localStorage.setItem("fleetpulse.token", state.token);
  $("#token-form").hidden = true;
  connect();
  route();
});

// --- live stream --------------------------------------------------------------------------
function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(withToken("/api/stream"));
  state.source = source;
  source.addEventListener("fleet", (e) => {
    const body = JSON.parse(e.data);
    state.devices = body.devices;
    state.lastEvent = body.at;
    $("#live").textContent = "live";
    $("#live").classList.add("on");
    renderSummary(body.summary);
    if (state.view === "fleet") renderFleet();
    if (state.view === "device") onDeviceEvent();
  });
  source.addEventListener("problem", (e) => showError(JSON.parse(e.data).detail));
  source.onerror = () => {
    $("#live").textContent = "reconnecting…";
    $("#live").classList.remove("on");
  };
}

// A page left for another (or kept in the back/forward cache) gives its stream's connection
// back: browsers allow six per host, and each open stream holds one.
window.addEventListener("pagehide", () => {
  if (state.source) { state.source.close(); state.source = null; }
});
window.addEventListener("pageshow", (e) => { if (e.persisted) connect(); });

function renderSummary(s) {
  const nav = $("#summary");
  nav.replaceChildren(...[["devices", "devices"], ["online", "online"], ["offline", "offline"],
    ["silent", "silent"], ["alerting", "alerting"]].map(([key, label]) =>
    el("span", { class: "chip", "data-summary": key }, el("b", { text: String(s[key]) }), ` ${label}`)));
}

// --- fleet page ---------------------------------------------------------------------------
function sortValue(d, key) {
  const l = d.latest || {};
  switch (key) {
    case "cpu": return l.cpu_percent ?? -1;
    case "memory": return l.memory_percent ?? -1;
    case "temp": return l.sensors_cpu_celsius ?? -1;
    case "throttling": return throttling(d.latest);
    case "alerts": return d.alerts.length;
    case "anomaly": return state.anomalies[d.device_id]?.rate ?? -1;
    case "last_seen": return d.last_seen ? -Date.parse(d.last_seen) : Infinity;
    case "state": return d.state;
    default: return d.device_id;
  }
}
function visibleDevices() {
  const text = $("#filter").value.trim().toLowerCase();
  const wanted = $("#state-filter").value;
  const { key, dir } = state.sort;
  return state.devices
    .filter((d) => !text || d.device_id.toLowerCase().includes(text) ||
      (d.hostname || "").toLowerCase().includes(text))
    .filter((d) => !wanted || (wanted === "alerting" ? d.alerts.length > 0 : d.state === wanted))
    .sort((a, b) => {
      const x = sortValue(a, key), y = sortValue(b, key);
      return (x < y ? -1 : x > y ? 1 : a.device_id < b.device_id ? -1 : 1) * dir;
    });
}
function bar(percent) {
  const i = el("i");
  i.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
  return el("span", { class: "bar" }, i);
}
// The share of the last hour's readings the device's model found unusual, or why it has none.
function anomalyText(a) {
  if (!a) return "–";
  if (a.state === "too_little_history") return "too little history";
  if (a.state !== "trained") return "no model";
  return a.rate === null ? "–" : `${(a.rate * 100).toFixed(1)} %`;
}
function anomalyCell(a) {
  const td = el("td", { class: "num", "data-col": "anomaly", text: anomalyText(a) });
  if (a && a.message) td.title = a.message;
  if (a && a.rate !== null && a.rate > 0.05) td.classList.add("hot");
  return td;
}
function renderFleet() {
  const rows = visibleDevices().map((d) => {
    const l = d.latest || {};
    const temp = el("td", { class: "num", "data-col": "temp", text: num(l.sensors_cpu_celsius) });
    if ((l.sensors_cpu_celsius || 0) >= 80) temp.classList.add("hot");
    const alerts = el("td", { "data-col": "alerts" },
      ...d.alerts.map((a) => el("span", { class: "badge alert", text: a.replaceAll("_", " ") })));
    const name = el("td", { "data-col": "device" }, el("a", { href: `#/device/${encodeURIComponent(d.device_id)}`, text: d.device_id }));
    if (d.hostname && d.hostname !== d.device_id) name.append(el("span", { class: "host", text: d.hostname }));
    const tr = el("tr", { "data-device": d.device_id }, name,
      el("td", { "data-col": "state" }, el("span", { class: `badge ${d.state}`, text: d.state })),
      el("td", { class: "num", "data-col": "cpu" }, num(l.cpu_percent), bar(l.cpu_percent)),
      el("td", { class: "num", "data-col": "memory" }, num(l.memory_percent), bar(l.memory_percent)),
      temp,
      el("td", { "data-col": "throttling", text: throttling(d.latest) }),
      anomalyCell(state.anomalies[d.device_id]),
      alerts,
      el("td", { class: "num", "data-col": "last_seen", text: ago(l.ts || d.last_seen) }));
    tr.addEventListener("click", (e) => {
      if (e.target.tagName !== "A") location.hash = `#/device/${encodeURIComponent(d.device_id)}`;
    });
    return tr;
  });
  $("#fleet tbody").replaceChildren(...rows);
  $("#empty").hidden = state.devices.length > 0;
  $("#shown").textContent = `${rows.length} of ${state.devices.length} shown`;
}
for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
    for (const other of document.querySelectorAll("#fleet th")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", state.sort.dir === 1 ? "ascending" : "descending");
    renderFleet();
  });
}
$("#filter").addEventListener("input", renderFleet);
$("#state-filter").addEventListener("change", renderFleet);


// Bytes per storage tier and the room the budget leaves (the hub's compactor measures them).
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function storageFacts(s) {
  if (!s) return [];
  const facts = [["Hot tier", `${bytes(s.hot_bytes)} (${s.hot_readings.toLocaleString()} readings)`],
    ["Cold tier", `${bytes(s.cold_bytes)} (${s.cold_readings.toLocaleString()} readings)`],
    ["Rollups", `${bytes(s.minute_bytes + s.hour_bytes)}`],
    ["Process samples", bytes(s.processes_bytes ?? 0)],
    ["Database", bytes(s.database_bytes)]];
  if (s.cold_bytes_per_device_day) facts.push(["Per device-day", bytes(s.cold_bytes_per_device_day)]);
  if (s.budget_bytes) {
    facts.push(["Budget", `${bytes(s.used_bytes)} of ${bytes(s.budget_bytes)}`]);
    if (s.device_days_fit !== null) facts.push(["Device-days fit", Math.floor(s.device_days_fit).toLocaleString()]);
  }
  if (s.budget_dropped_hours) facts.push(["Dropped by budget", `${s.budget_dropped_readings.toLocaleString()} readings`]);
  return facts;
}

async function refreshFleetPanels() {
  try {
    const [alerts, quarantine, health, anomalies] = await Promise.all([
      api("/api/alerts?open=true&limit=50"), api("/api/quarantine?hours=24&limit=5"),
      fetch("/api/health").then((r) => r.json()), api("/api/anomalies")]);
    state.anomalies = Object.fromEntries(anomalies.map((a) => [a.device_id, a]));
    renderFleet();
    $("#open-alerts").replaceChildren(...(alerts.length ? alerts.map((a) => el("li", {},
      el("a", { href: `#/device/${encodeURIComponent(a.device_id)}`, text: a.device_id }),
      ` ${a.message} `, el("span", { class: "muted", text: `since ${ago(a.started_at)}` })))
      : [el("li", { class: "muted", text: "None" })]));
    const q = $("#quarantine");
    q.replaceChildren(el("p", { text: `${quarantine.total} messages refused` }),
      el("ul", { class: "alerts" }, ...quarantine.by_reason.map((r) =>
        el("li", {}, el("b", { text: `${r.count}× ` }), r.reason))));
    const facts = [["Broker", health.broker_connected ? "connected" : "disconnected"],
      ["Database", health.database_reachable ? "reachable" : "unreachable"],
      ["Last write", ago(health.last_write_at)], ["Backlog", String(health.backlog)],
      ["Stored", String(health.stored)], ["Quarantined", String(health.quarantined)],
      ...storageFacts(health.storage)];
    $("#health").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  } catch (err) { showError(`Cannot load the fleet panels: ${err.message}`); }
}

// --- device page --------------------------------------------------------------------------
const PALETTE = ["#1f5fbf", "#c62828", "#1a7f37", "#b26a00", "#6a4fb3", "#00838f", "#ad1457",
  "#5d4037", "#455a64", "#7cb342", "#f9a825", "#0277bd"];
const CHARTS = {
  cpu: { el: "#chart-cpu", unit: "%", series: (cores) => [["CPU", "cpu_percent"],
    ...Array.from({ length: cores }, (_, i) => [`core ${i}`, `core${i}`])] },
  memory: { el: "#chart-memory", unit: "%", series: () => [["memory", "memory_percent"], ["swap", "memory_swap_percent"]] },
  temp: { el: "#chart-temp", unit: "°C", series: () => [["CPU", "sensors_cpu_celsius"]] },
  disk: { el: "#chart-disk", unit: "B/s", series: () => [["read", "disk_read_bytes_per_s"], ["write", "disk_write_bytes_per_s"]] },
  net: { el: "#chart-net", unit: "B/s", series: () => [["received", "network_bytes_recv_per_s"], ["sent", "network_bytes_sent_per_s"]] },
};

// From the figure: the chart's own box is hidden (no width) while it has no data.
function chartWidth(node) { return Math.max(300, node.parentElement.clientWidth - 24); }
function makeChart(name, labels, data) {
  const spec = CHARTS[name];
  const node = $(spec.el);
  if (state.charts[name]) state.charts[name].destroy();
  const series = [{}, ...labels.map(([label], i) => ({
    label, stroke: PALETTE[i % PALETTE.length], width: i === 0 ? 2 : 1,
    dash: name === "cpu" && i > 0 ? [4, 3] : undefined,
    value: (u, v) => (v === null || v === undefined ? "–" : spec.unit === "B/s" ? bytesPerS(v) : v.toFixed(1)),
  }))];
  const axisValues = spec.unit === "B/s" ? (u, ticks) => ticks.map((t) => bytesPerS(t)) : undefined;
  const opts = {
    width: chartWidth(node), height: CHART_HEIGHT, series,
    scales: {
      // Live: always a 60 s window ending at the newest reading, however few points yet.
      x: state.range === "live" ? { time: true, range: (u, min, max) => [max - LIVE_WINDOW_S, max] }
        : { time: true },
      y: spec.unit === "%" ? { range: [0, 100] } : { auto: true },
    },
    axes: [{}, { size: spec.unit === "B/s" ? 80 : 50, values: axisValues }],
    legend: { live: true },
    hooks: { draw: [drawBand] },
  };
  const chart = new uPlot(opts, data, node);
  state.charts[name] = chart;
  chart.labels = labels;
  // A click on a chart shows the top processes at that moment.
  chart.over.addEventListener("click", () => {
    const t = chart.posToVal(chart.cursor.left, "x");
    if (Number.isFinite(t)) showProcessesAt(new Date(t * 1000));
  });
  markEmpty(name, data);
}

// The anomaly band: each bucket with unusual readings shaded red across the plot, darker
// the larger their share; a reading scored above the threshold in the live view is a bucket
// of its own.
function drawBand(u) {
  const band = state.band;
  if (!band || !band.t.length) return;
  const { ctx } = u;
  const top = u.bbox.top, height = u.bbox.height;
  ctx.save();
  for (let i = 0; i < band.t.length; i++) {
    if (!band.rate[i]) continue;
    const x0 = u.valToPos(band.t[i], "x", true), x1 = u.valToPos(band.t[i] + band.step_s, "x", true);
    ctx.fillStyle = `rgba(198, 40, 40, ${0.12 + 0.5 * Math.min(1, band.rate[i])})`;
    ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
  }
  ctx.restore();
}

async function loadBand(w, stepS) {
  const path = `/api/devices/${encodeURIComponent(state.device)}/anomalies?start=${encodeURIComponent(w.start)}&end=${encodeURIComponent(w.end)}&step_s=${stepS}`;
  try {
    state.band = await api(path);
    for (const chart of Object.values(state.charts)) chart.redraw(false, false);
  } catch (err) { state.band = null; }
}

function markEmpty(name, data) {
  // Say so when a device cannot measure something (no sensor), in one short line instead
  // of an empty chart box.
  const node = $(CHARTS[name].el);
  const figure = node.parentElement;
  const caption = figure.querySelector("figcaption");
  const empty = data.slice(1).every((column) => column.every((v) => v === null || v === undefined));
  let note = caption.querySelector(".nodata");
  if (empty && !note) caption.append(note = el("span", { class: "nodata muted", text: " — no data in this range" }));
  if (!empty && note) note.remove();
  const was = figure.classList.contains("empty");
  figure.classList.toggle("empty", empty);
  if (was && !empty && state.charts[name]) {
    state.charts[name].setSize({ width: chartWidth(node), height: CHART_HEIGHT });
  }
}

// A time range's chart spans the whole range asked for, however little data it holds (a
// young device's two points in a 24 h view): empty points at both ends keep the x axis
// there, also after a zoom is reset.
function padToWindow(data, start, end) {
  const t = data[0];
  const before = !t.length || t[0] > start, after = !t.length || t[t.length - 1] < end;
  return data.map((column, i) => [...(before ? [i ? null : start] : []), ...column,
    ...(after ? [i ? null : end] : [])]);
}

function columnsFromSeries(body, labels) {
  const cores = body.per_core || [];
  return [body.t, ...labels.map(([, key]) => key.startsWith("core")
    ? cores[Number(key.slice(4))] || body.t.map(() => null)
    : body.series[key].mean)];
}

function drawAll(body) {
  const cores = body.per_core ? body.per_core.length : 0;
  const start = Date.parse(body.start) / 1000, end = Date.parse(body.end) / 1000;
  for (const name of Object.keys(CHARTS)) {
    const labels = CHARTS[name].series(cores);
    const data = columnsFromSeries(body, labels);
    makeChart(name, labels, state.range === "live" ? data : padToWindow(data, start, end));
  }
  const kind = { raw: "per second", "1m": "minute rollup", "1h": "hour rollup" }[body.source];
  $("#range-label").textContent = `${kind}, ${body.step_s} s per point, ${body.t.length} points`;
  $("#range-label").dataset.source = body.source;
  $("#range-label").dataset.points = String(body.t.length);
}

let rangeRequest = 0;  // answers to superseded requests are dropped
// The window of the selected range as the API's start and end: ISO times for a custom
// range, an age (the API's and the CLI's syntax) for the others, so that an export link
// made now still means "the last 24 h" when it is clicked later.
function rangeWindow() {
  if (state.range === "custom") {
    const c = state.custom;
    if (!c || isNaN(c.start) || isNaN(c.end)) return null;
    return { start: c.start.toISOString(), end: c.end.toISOString() };
  }
  const seconds = state.range === "live" ? LIVE_WINDOW_S : Number(state.range);
  return { start: `${seconds}s`, end: "now" };
}

async function loadRange() {
  const ticket = ++rangeRequest;
  const w = rangeWindow();
  if (!w) { showError("Choose both ends of the custom range."); return; }
  const path = `/api/devices/${encodeURIComponent(state.device)}/series?start=${encodeURIComponent(w.start)}&end=${encodeURIComponent(w.end)}`;
  try {
    const body = await api(path);
    if (ticket !== rangeRequest) return;
    showError("");
    state.live = state.range === "live" ? { body } : null;
    drawAll(body);
    loadBand(w, Math.max(1, body.step_s || 1));
  } catch (err) { if (ticket === rangeRequest) showError(`Cannot load the series: ${err.message}`); }
}

function appendLive(device) {
  const l = device.latest;
  if (!state.live || !l) return;
  const body = state.live.body;
  const t = Date.parse(l.ts) / 1000;
  const last = body.t.length ? body.t[body.t.length - 1] : 0;
  if (t <= last) return;
  body.t.push(t);
  for (const [key, entry] of Object.entries(body.series)) {
    const v = l[key] ?? null;
    entry.mean.push(v); entry.min.push(v); entry.max.push(v);
  }
  const cores = l.cpu_per_core_percent || [];
  if (!body.per_core || body.per_core.length !== cores.length) {
    body.per_core = cores.map(() => body.t.slice(0, -1).map(() => null));
  }
  cores.forEach((v, i) => body.per_core[i].push(v));
  if (state.band && l.anomaly_score !== null && l.anomaly_score !== undefined) {
    const b = state.band;
    b.t.push(t); b.rate.push(l.anomaly_score > ANOMALY_THRESHOLD ? 1 : 0); b.max.push(l.anomaly_score);
    b.step_s = Math.max(1, b.step_s || 1);
    while (b.t.length && b.t[0] < t - LIVE_WINDOW_S) { b.t.shift(); b.rate.shift(); b.max.shift(); }
  }
  while (body.t.length && body.t[0] < t - LIVE_WINDOW_S) {
    body.t.shift();
    for (const entry of Object.values(body.series)) { entry.mean.shift(); entry.min.shift(); entry.max.shift(); }
    for (const core of body.per_core) core.shift();
  }
  const cpuLabels = CHARTS.cpu.series(cores.length);
  for (const name of Object.keys(CHARTS)) {
    const chart = state.charts[name];
    const labels = name === "cpu" ? cpuLabels : chart.labels;
    const data = columnsFromSeries(body, labels);
    if (chart && chart.labels.length === labels.length) { chart.setData(data); markEmpty(name, data); }
    else makeChart(name, labels, data);
  }
  $("#range-label").textContent = `live, per second, ${body.t.length} points`;
  $("#range-label").dataset.points = String(body.t.length);
}

function renderCurrent(d) {
  const l = d.latest || {};
  $("#device-state").className = `badge ${d.state}`;
  $("#device-state").textContent = d.state;
  const cores = (l.cpu_per_core_percent || []).map((v) => v.toFixed(0)).join(" · ");
  const facts = [
    ["CPU", `${num(l.cpu_percent)} %`, "current-cpu"], ["Per core", cores || "–", "current-cores"],
    ["Load (1 min)", num(l.cpu_load_1, 2), "current-load"],
    ["Memory", `${num(l.memory_percent)} %`, "current-memory"], ["Swap", `${num(l.memory_swap_percent)} %`, "current-swap"],
    ["Temperature", `${num(l.sensors_cpu_celsius)} °C`, "current-temp"],
    ["Fullest disk", `${num(l.disk_max_percent)} %`, "current-disk"],
    ["Disk read", bytesPerS(l.disk_read_bytes_per_s), "current-disk-read"],
    ["Disk write", bytesPerS(l.disk_write_bytes_per_s), "current-disk-write"],
    ["Net in", bytesPerS(l.network_bytes_recv_per_s), "current-net-in"],
    ["Net out", bytesPerS(l.network_bytes_sent_per_s), "current-net-out"],
    ["Throttling", throttling(d.latest), "current-throttling"],
    ["Reading", l.ts ? new Date(l.ts).toLocaleTimeString() : "–", "current-ts"]];
  $("#current").replaceChildren(...facts.flatMap(([k, v, id]) => [el("dt", { text: k }), el("dd", { id, text: v })]));
}

function onDeviceEvent() {
  const d = state.devices.find((x) => x.device_id === state.device);
  if (!d) return;
  renderCurrent(d);
  if (state.range === "live") appendLive(d);
  followProcesses(d);
}

async function loadDevice() {
  const device = state.device;
  try {
    const [d, alerts, detector] = await Promise.all([
      api(`/api/devices/${encodeURIComponent(device)}`),
      api(`/api/devices/${encodeURIComponent(device)}/alerts?limit=20`),
      api(`/api/anomalies?device=${encodeURIComponent(device)}`)]);
    if (device !== state.device) return;  // the user moved on to another device
    showError("");
    $("#device-title").textContent = d.device_id;
    $("#device-facts").textContent = [d.hostname, d.pi_model, d.os].filter(Boolean).join(" · ");
    renderCurrent(d);
    const a = detector[0];
    const model = a && a.model ? `v${a.model.version} (${a.model.kind}), trained ${ago(a.model.trained_at)}` : (a ? a.message : "–");
    $("#detector").replaceChildren(...[["Model", model, "detector-model"],
      ["Unusual, last hour", anomalyText(a), "detector-rate"]].flatMap(([k, v, id]) =>
      [el("dt", { text: k }), el("dd", { id, text: v })]));
    const c = [["Last hour", d.completeness_1h], ["Last 24 h", d.completeness_24h]];
    $("#completeness").replaceChildren(...c.flatMap(([k, v]) => [el("dt", { text: k }),
      el("dd", { text: v.ratio === null ? "–" : `${(v.ratio * 100).toFixed(1)} % (${v.stored}/${v.expected})` })]));
    $("#device-alerts").replaceChildren(...(alerts.length ? alerts.map((a) => el("li", { class: a.ended_at ? "closed" : "" },
      el("b", { text: a.rule.replaceAll("_", " ") }), ` ${a.ended_at ? "ended " + ago(a.ended_at) : "open since " + ago(a.started_at)}`,
      el("div", { class: "muted", text: a.message })))
      : [el("li", { class: "muted", text: "None" })]));
  } catch (err) { if (device === state.device) showError(`Cannot load ${device}: ${err.message}`); }
}

// --- top processes: live (following the stream) or at a chosen moment ----------------------
function bytesShort(v) { return v === null || v === undefined ? "–" : bytes(v); }
function sortedProcesses() {
  const { sample, sort } = state.procs;
  if (!sample) return [];
  const list = sort.key === "memory" ? sample.top_memory : sample.top_cpu;
  const value = (p) => (sort.key === "memory" ? p.rss_bytes : p.cpu_percent ?? -1);
  return [...list].sort((a, b) => (value(a) - value(b)) * sort.dir || a.pid - b.pid);
}
function renderProcesses() {
  const { sample, at } = state.procs;
  const none = $("#processes-none");
  $("#processes-live").setAttribute("aria-pressed", String(at === null));
  $("#processes-when").textContent = sample
    ? `${at === null ? "live, " : ""}sampled ${new Date(sample.ts).toLocaleString()} over ${num(sample.period_s)} s`
    : "";
  $("#processes-counts").textContent = sample
    ? `${sample.count} processes: ${sample.running} running, ${sample.sleeping} sleeping, ${sample.zombie} zombie, ${sample.other} other`
    : "";
  none.hidden = Boolean(sample);
  none.textContent = at === null
    ? "No process samples yet (the agent sends them every process_period_s once the hub reads them)."
    : `No process sample in the 5 minutes up to ${at.toLocaleString()}.`;
  const rows = sortedProcesses().map((p) => el("tr", { "data-pid": String(p.pid) },
    el("td", { class: "num", text: String(p.pid) }), el("td", { "data-col": "name", text: p.name }),
    el("td", { text: p.user ?? "–" }), el("td", { class: "num", "data-col": "cpu", text: num(p.cpu_percent) }),
    el("td", { class: "num", "data-col": "rss", text: bytesShort(p.rss_bytes) }),
    el("td", { class: "num", text: num(p.memory_percent) }),
    el("td", { class: "num", text: p.threads ?? "–" }), el("td", { text: p.status }),
    el("td", { class: "num", text: bytesShort(p.io_read_bytes) }),
    el("td", { class: "num", text: bytesShort(p.io_write_bytes) })));
  $("#processes tbody").replaceChildren(...rows);
}
async function loadProcesses() {
  const device = state.device, at = state.procs.at;
  state.procs.loading = true;
  try {
    const query = at === null ? "" : `?at=${encodeURIComponent(at.toISOString())}`;
    const body = await api(`/api/devices/${encodeURIComponent(device)}/processes${query}`);
    if (device !== state.device || at !== state.procs.at) return;  // superseded
    const fresh = body.sample && (!state.procs.sample || body.sample.ts !== state.procs.sample.ts);
    state.procs.sample = body.sample;
    renderProcesses();
    if (fresh && at === null && state.range === "live") loadProcessHistory();
  } catch (err) { if (device === state.device) showError(`Cannot load the processes: ${err.message}`); }
  finally { state.procs.loading = false; }
}
// Live: each stream event says how new the device's readings are; a sample is due once its
// period has passed since the one shown (or none is shown yet).
function followProcesses(d) {
  const { sample, at, loading } = state.procs;
  if (at !== null || loading || !d.latest) return;
  const shownAt = sample ? Date.parse(sample.ts) / 1000 + sample.period_s : 0;
  const last = state.procs.checked || 0;
  if (Date.parse(d.latest.ts) / 1000 < shownAt || Date.now() / 1000 - last < 2) return;
  state.procs.checked = Date.now() / 1000;
  loadProcesses();
}
// The range's process samples as a chart: counts, and the busiest process's CPU % (of one
// core, so it may pass 100) on its own axis. A click shows the table at that moment.
let historyRequest = 0;
async function loadProcessHistory() {
  const ticket = ++historyRequest;
  const w = state.range === "live" ? { start: "600s", end: "now" } : rangeWindow();
  if (!w || !state.device) return;
  try {
    const body = await api(`/api/devices/${encodeURIComponent(state.device)}/processes/history?start=${encodeURIComponent(w.start)}&end=${encodeURIComponent(w.end)}&max_samples=500`);
    if (ticket !== historyRequest) return;
    const s = body.samples;
    // A gap of more than three periods (the agent stopped, or had them off) breaks the lines.
    let data = [[], [], [], []];
    s.forEach((x, i) => {
      const t = Date.parse(x.ts) / 1000;
      if (i && t - data[0][data[0].length - 1] > 3 * Math.max(x.period_s || 10, 10)) {
        data[0].push(t - 1); data[1].push(null); data[2].push(null); data[3].push(null);
      }
      data[0].push(t); data[1].push(x.count); data[2].push(x.running); data[3].push(x.top_cpu_percent);
    });
    data = padToWindow(data, Date.parse(body.start) / 1000, Date.parse(body.end) / 1000);
    const node = $("#chart-processes");
    if (state.procs.chart) state.procs.chart.destroy();
    const figure = $("#processes-history-figure");
    figure.classList.toggle("empty", s.length === 0);
    figure.dataset.samples = String(s.length);
    const chart = new uPlot({
      width: chartWidth(node), height: 140,
      series: [{}, { label: "processes", stroke: PALETTE[0], scale: "n" },
        { label: "running", stroke: PALETTE[2], scale: "n" },
        { label: "busiest CPU %", stroke: PALETTE[1], scale: "%", value: (u, v) => num(v) }],
      scales: { x: { time: true }, n: { auto: true }, "%": { auto: true } },
      axes: [{}, { scale: "n", size: 50 }, { scale: "%", side: 1, size: 50 }],
    }, data, node);
    chart.over.addEventListener("click", () => {
      const t = chart.posToVal(chart.cursor.left, "x");
      if (Number.isFinite(t)) showProcessesAt(new Date(t * 1000));
    });
    state.procs.chart = chart;
  } catch (err) { if (ticket === historyRequest) showError(`Cannot load the process history: ${err.message}`); }
}

function showProcessesAt(at) {
  state.procs.at = at;
  state.procs.checked = 0;
  if (at) $("#processes-at").value = toLocalInput(at, true);
  if (state.device) loadProcesses();
}
for (const th of document.querySelectorAll("#processes th[data-sort]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort, sort = state.procs.sort;
    state.procs.sort = { key, dir: sort.key === key ? -sort.dir : -1 };
    for (const other of document.querySelectorAll("#processes th")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", state.procs.sort.dir === 1 ? "ascending" : "descending");
    renderProcesses();
  });
}
$("#processes-show").addEventListener("click", () => {
  const at = new Date($("#processes-at").value);
  if (!isNaN(at)) showProcessesAt(at);
});
$("#processes-live").addEventListener("click", () => showProcessesAt(null));

const RANGES = ["live", "3600", "86400", "604800", "2592000", "7776000", "custom"];
// <input type="datetime-local"> holds local time without a zone.
function toLocalInput(x, seconds = false) {
  return new Date(x.getTime() - x.getTimezoneOffset() * 60000).toISOString().slice(0, seconds ? 19 : 16);
}

function setRange(range, custom = null) {
  state.range = RANGES.includes(range) ? range : "live";
  for (const b of document.querySelectorAll("button.range")) b.setAttribute("aria-pressed", String(b.dataset.range === state.range));
  $("#custom-range").hidden = state.range !== "custom";
  if (state.range === "custom") {
    if (custom) state.custom = custom;
    if (!state.custom) {
      const end = new Date();
      state.custom = { start: new Date(end.getTime() - 6 * 3600 * 1000), end };
    }
    $("#custom-start").value = toLocalInput(state.custom.start);
    $("#custom-end").value = toLocalInput(state.custom.end);
  }
  rangeChanged();
}
function rangeChanged() {
  loadRange();
  loadProcessHistory();
  updateExportLinks();
  writeRangeToUrl();
}
for (const b of document.querySelectorAll("button.range")) b.addEventListener("click", () => setRange(b.dataset.range));
$("#custom-apply").addEventListener("click", () => {
  state.custom = { start: new Date($("#custom-start").value), end: new Date($("#custom-end").value) };
  rangeChanged();
});

function updateExportLinks() {
  // What the chart shows; the live view exports its last hour.
  const w = state.range === "live" ? { start: "3600s", end: "now" } : rangeWindow();
  for (const format of ["csv", "parquet"]) {
    const link = $(`#export-${format}`);
    if (!w) { link.removeAttribute("href"); continue; }
    link.href = withToken(`/api/devices/${encodeURIComponent(state.device)}/export?format=${format}&start=${encodeURIComponent(w.start)}&end=${encodeURIComponent(w.end)}`);
  }
}

// The selected range lives in the URL (#/device/<id>?range=86400, or range=custom with
// start and end), so a view can be linked and comes back the same after a reload.
function writeRangeToUrl() {
  const params = new URLSearchParams();
  if (state.range !== "live") params.set("range", state.range);
  const w = state.range === "custom" ? rangeWindow() : null;
  if (w) { params.set("start", w.start); params.set("end", w.end); }
  const query = params.toString();
  const hash = `#/device/${encodeURIComponent(state.device)}${query ? "?" + query : ""}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);  // no hashchange: no reload
}
function rangeFromUrl(query) {
  const params = new URLSearchParams(query || "");
  const range = params.get("range") || "live";
  const start = new Date(params.get("start") || ""), end = new Date(params.get("end") || "");
  return { range, custom: range === "custom" && !isNaN(start) && !isNaN(end) ? { start, end } : null };
}

// --- routing ------------------------------------------------------------------------------
function route() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  const match = location.hash.match(/^#\/device\/([^?]+)(?:\?(.*))?$/);
  $("#token-form").hidden = true;
  showError("");
  if (match) {
    state.view = "device";
    state.device = decodeURIComponent(match[1]);
    $("#fleet-view").hidden = true;
    $("#device-view").hidden = false;
    document.title = `${state.device} · fleetpulse`;
    loadDevice();
    state.procs.sample = null;
    showProcessesAt(null);
    const { range, custom } = rangeFromUrl(match[2]);
    state.custom = null;
    setRange(range, custom);
    state.timers.push(setInterval(loadDevice, 30000));
  } else {
    state.view = "fleet";
    state.device = null;
    $("#device-view").hidden = true;
    $("#fleet-view").hidden = false;
    document.title = "fleetpulse";
    renderFleet();
    refreshFleetPanels();
    state.timers.push(setInterval(refreshFleetPanels, 10000));
  }
}
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => {
  for (const [name, chart] of Object.entries(state.charts)) {
    chart.setSize({ width: chartWidth($(CHARTS[name].el)), height: CHART_HEIGHT });
  }
});
connect();
route();
