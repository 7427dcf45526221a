/* fleetpulse dashboard: settings changed remotely. On a device page, the device's settings
   (in effect, requested, pending / applied / refused) and a form to change them; on the fleet
   page, a panel to set the interval of several devices at once. Uses app.js's helpers
   ($, el, api, state, ago, showError); loaded after it. */
"use strict";

const SETTINGS = {
  interval_s: { label: "Interval", unit: "s", step: "any" },
  process_period_s: { label: "Process scan period", unit: "s (0: off)", step: "any" },
  process_top_n: { label: "Top processes", unit: "", step: "1" },
};
const settingsState = { device: null, timer: null, view: null, chosen: new Set() };
window.fleetpulseSettings = settingsState;  // for the browser tests

async function sendJson(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers, body: JSON.stringify(body) });
  if (response.status === 401) { askToken(); throw new Error("a token is needed"); }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.detail || response.statusText);
  return answer;
}

function fmtSetting(v) { return v === null || v === undefined ? "–" : String(v); }

function stateCell(s) {
  if (!s.requested) return el("td", { "data-col": "state", class: "muted", text: "–" });
  const wanted = s.desired === null ? "own value" : fmtSetting(s.desired);
  const cell = el("td", { "data-col": "state" },
    el("span", { class: `badge setting-${s.state}`, text: s.state }), ` ${wanted}`);
  if (s.reason) cell.append(el("div", { class: "muted reason", text: s.reason }));
  return cell;
}

function renderDeviceSettings(view) {
  settingsState.view = view;
  const box = $("#settings-table");
  const note = $("#settings-note");
  note.textContent = view.supported ? "" : view.note;
  note.hidden = view.supported;
  $("#settings-form").hidden = !view.supported;
  box.replaceChildren(...view.settings.map((s) => {
    const known = SETTINGS[s.setting] || { label: s.setting, unit: "" };
    const b = s.bounds;
    const bounds = `${b.zero_is_off ? "0 (off) or " : ""}${b.min}–${b.max}`;
    return el("tr", { "data-setting": s.setting },
      el("td", { text: known.label }),
      el("td", { class: "num", "data-col": "reported", text: fmtSetting(s.reported) }),
      el("td", { "data-col": "source", class: "muted", text: s.source || "–" }),
      stateCell(s),
      el("td", { class: "muted", text: bounds }));
  }));
  const r = view.last_refusal;
  $("#settings-refusal").hidden = !r;
  if (r) $("#settings-refusal").textContent = `Last refused (${ago(r.at)}): ${r.reason}`;
}

async function loadDeviceSettings() {
  const device = settingsState.device;
  if (!device) return;
  try {
    const view = await api(`/api/devices/${encodeURIComponent(device)}/settings`);
    if (device === settingsState.device) renderDeviceSettings(view);
  } catch (err) { $("#settings-message").textContent = `Cannot load the settings: ${err.message}`; }
}

$("#settings-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const change = {};
  for (const name of Object.keys(SETTINGS)) {
    const input = $(`#set-${name}`);
    if (input.value.trim() !== "") change[name] = Number(input.value);
  }
  const message = $("#settings-message");
  if (!Object.keys(change).length) { message.textContent = "Enter a value to change."; return; }
  try {
    const view = await sendJson("PUT", `/api/devices/${encodeURIComponent(settingsState.device)}/settings`, change);
    renderDeviceSettings(view);
    message.textContent = "Sent; applied at the device's next reading.";
    for (const name of Object.keys(change)) $(`#set-${name}`).value = "";
  } catch (err) { message.textContent = err.message; }
});

// --- fleet page: several devices at once ---------------------------------------------------
function renderBulkChoices() {
  const list = $("#bulk-devices");
  const devices = state.devices.slice().sort((a, b) => (a.device_id < b.device_id ? -1 : 1));
  list.replaceChildren(...devices.map((d) => {
    const box = el("input", { type: "checkbox", value: d.device_id, "aria-label": `choose ${d.device_id}` });
    box.checked = settingsState.chosen.has(d.device_id);
    box.addEventListener("change", () => {
      if (box.checked) settingsState.chosen.add(d.device_id); else settingsState.chosen.delete(d.device_id);
      $("#bulk-count").textContent = `${settingsState.chosen.size} chosen`;
    });
    const interval = d.interval_s;
    return el("label", { class: "choice", "data-device": d.device_id }, box, ` ${d.device_id}`,
      el("span", { class: "muted", text: interval ? ` (${interval} s)` : "" }));
  }));
  $("#bulk-count").textContent = `${settingsState.chosen.size} chosen`;
}

$("#bulk-all").addEventListener("click", () => {
  const all = state.devices.map((d) => d.device_id);
  const every = all.every((id) => settingsState.chosen.has(id));
  settingsState.chosen = every ? new Set() : new Set(all);
  renderBulkChoices();
});

$("#bulk-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const message = $("#bulk-message");
  const value = $("#bulk-interval").value.trim();
  if (!settingsState.chosen.size) { message.textContent = "Choose devices first."; return; }
  if (value === "") { message.textContent = "Enter an interval in seconds."; return; }
  try {
    const answer = await sendJson("POST", "/api/settings",
      { devices: [...settingsState.chosen], settings: { interval_s: Number(value) } });
    const skipped = answer.results.filter((r) => !r.accepted);
    message.replaceChildren(el("div", { text: `Sent to ${answer.accepted} device(s).` }),
      ...skipped.map((r) => el("div", { class: "muted", text: `${r.device_id}: ${r.reason}` })));
  } catch (err) { message.textContent = err.message; }
});

// --- following the page ----------------------------------------------------------------------
function followRoute() {
  if (settingsState.timer) clearInterval(settingsState.timer);
  settingsState.timer = null;
  const match = location.hash.match(/^#\/device\/([^?]+)/);
  $("#settings-message").textContent = "";
  if (match) {
    settingsState.device = decodeURIComponent(match[1]);
    $("#settings-table").replaceChildren();
    loadDeviceSettings();
    settingsState.timer = setInterval(loadDeviceSettings, 3000);
  } else {
    settingsState.device = null;
    renderBulkChoices();
    settingsState.timer = setInterval(renderBulkChoices, 2000);
  }
}
window.addEventListener("hashchange", followRoute);
followRoute();
