// KITT panel: plain JavaScript, no build step. Everything comes from /api/v1 and the live WebSocket.
// Data is only ever put into the page with textContent (never innerHTML), so nothing the house reports
// can run as script.
"use strict";

const API = "/api/v1";
const state = {
  csrf: null,
  devices: new Map(),          // name -> device
  pending: new Map(),          // id -> confirmation
  recent: [],
  jobs: [],
  runs: new Map(),             // id -> run
  status: null,
  cache: null,
  audit: { before: null, stack: [], next: null },
};

// --- helpers ------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function pretty(action) { return String(action).replaceAll("_", " "); }

let toastTimer = null;
function toast(message, isError = false) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.toggle("error", isError);
  t.classList.remove("hidden");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.add("hidden"), 4000);
}

class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : (body?.error || `HTTP ${status}`));
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) { location.assign("/login"); throw new ApiError(401, null); }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function guarded(fn) {
  try { return await fn(); } catch (err) { toast(err.message || String(err), true); return null; }
}

// --- tabs ---------------------------------------------------------------------------------------------

function showTab() {
  const name = (location.hash || "#dashboard").slice(1);
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === name);
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === name);
}

// --- dashboard ----------------------------------------------------------------------------------------

function card(label, value, sub, cls) {
  return el("div", { class: "card", "data-card": label },
    el("div", { class: "label", text: label }),
    el("div", { class: "value " + (cls || ""), text: value }),
    sub ? el("div", { class: "sub", text: sub }) : null);
}

function checkCard(label, check) {
  if (!check) return card(label, "—", "not reported");
  return card(label, check.ok ? "OK" : "down", check.ok ? "" : check.reason, check.ok ? "ok" : "bad");
}

function renderDashboard() {
  const s = state.status || {};
  const checks = s.checks || {};
  const cards = [];
  const spine = s.spine || {};
  cards.push(card("Spine", checks.spine?.ok ? "OK" : "down",
    `connected ${spine.connected ? "yes" : "no"} · subscribed ${spine.subscribed ? "yes" : "no"}`,
    checks.spine?.ok ? "ok" : "bad"));
  cards.push(checkCard("Store", checks.store));
  cards.push(checks.vectors ? checkCard("Vectors", checks.vectors)
    : card("Vectors", s.vectors ? "OK" : "—", s.vectors ? "" : "not running"));
  const c = state.cache;
  cards.push(c ? card("Cache hit ratio", `${Math.round((c.hit_ratio || 0) * 100)}%`,
    `${c.hits} hits · ${c.misses} misses · ${c.entries ?? "?"} entries`)
    : card("Cache hit ratio", "—", "cache not running"));
  const failing = state.jobs.filter(j => j.last_status && !["succeeded", "running", "scheduled"].includes(j.last_status));
  cards.push(card("Routines", String(state.jobs.length),
    failing.length ? `${failing.length} failing: ${failing.map(j => j.name).join(", ")}` : "none failing",
    failing.length ? "warn" : ""));
  cards.push(card("Pending confirmations", String(state.pending.size), "", state.pending.size ? "warn" : ""));
  cards.push(card("Uptime", s.uptime_s != null ? `${Math.round(s.uptime_s / 60)} min` : "—", s.hub_id || ""));
  document.getElementById("dash-cards").replaceChildren(...cards);
  const badge = document.getElementById("pending-badge");
  badge.textContent = String(state.pending.size);
  badge.classList.toggle("hidden", state.pending.size === 0);
}

// --- devices ------------------------------------------------------------------------------------------

const SIMPLE = ["turn_on", "turn_off", "toggle", "lock", "unlock", "open", "close", "stop", "arm", "disarm"];

function describeState(d) {
  const entries = Object.entries(d.state || {});
  if (!entries.length) return [el("span", { text: "no report yet" })];
  return entries.flatMap(([k, v], i) => [i ? " · " : "", `${pretty(k)} `, el("b", { text: String(v) })]);
}

function deviceCard(d) {
  const controls = [];
  for (const action of SIMPLE) {
    if (!d.capabilities.includes(action)) continue;
    const hazard = d.hazards[action];
    controls.push(el("button", {
      type: "button", class: hazard ? "hazard" : "secondary", "data-action": action,
      title: hazard ? `needs a confirmation (${hazard})` : undefined,
      // A hazardous action only opens a confirmation (202); the dialog that follows is the confirmation step.
      onclick: () => act(d.name, action, {}),
    }, (hazard ? "⚠ " : "") + pretty(action)));
  }
  if (d.capabilities.includes("set_brightness")) {
    const slider = el("input", { type: "range", min: "0", max: "100", value: String(d.state.brightness ?? 50),
      "aria-label": `${d.label} brightness` });
    slider.addEventListener("change", () => act(d.name, "set_brightness", { brightness: Number(slider.value) }));
    controls.push(slider);
  }
  if (d.capabilities.includes("set_temperature")) {
    const input = el("input", { type: "number", step: "0.5", min: "5", max: "30",
      value: String(d.state.temperature ?? 20), "aria-label": `${d.label} temperature` });
    controls.push(input, el("button", { type: "button", class: "secondary",
      onclick: () => act(d.name, "set_temperature", { temperature: Number(input.value) }) }, "set °C"));
  }
  const availability = d.available === false ? el("span", { class: "bad", text: "unavailable" })
    : d.available === true ? el("span", { class: "ok", text: "online" }) : el("span", { class: "warn", text: "unknown" });
  return el("div", { class: "device" + (d.available === false ? " unavailable" : ""), "data-device": d.name },
    el("div", { class: "head" }, el("span", { class: "name", text: d.label }), availability),
    el("div", { class: "state", "data-state": d.name }, ...describeState(d)),
    el("div", { class: "controls" }, ...controls));
}

function renderDevices() {
  const areas = new Map();
  for (const d of state.devices.values()) {
    const area = d.area || "elsewhere";
    if (!areas.has(area)) areas.set(area, []);
    areas.get(area).push(d);
  }
  const blocks = [...areas.keys()].sort().map(area => el("div", { class: "area" },
    el("h3", { text: area }),
    el("div", { class: "devices" }, ...areas.get(area).sort((a, b) => a.label.localeCompare(b.label)).map(deviceCard))));
  document.getElementById("device-areas").replaceChildren(
    ...(blocks.length ? blocks : [el("p", { class: "empty", text: "No devices (is handlers.devices running?)" })]));
}

async function act(name, action, params) {
  await guarded(async () => {
    const result = await api("POST", `/devices/${encodeURIComponent(name)}/actions`, { action, params });
    if (result.state === "pending") { upsertPending(result); openConfirm(result); }
    else toast(`${pretty(action)} sent to ${name}`);
  });
}

// --- confirmations ------------------------------------------------------------------------------------

let dialogConfirmation = null;

function openConfirm(c) {
  dialogConfirmation = c;
  document.getElementById("confirm-title").textContent = `Confirm: ${pretty(c.action)} ${c.device}`;
  document.getElementById("confirm-text").textContent = `${c.prompt} (${c.hazard_class}, until ${fmtTime(c.expires_at)})`;
  document.getElementById("pin-row").classList.toggle("hidden", c.level !== "pin");
  document.getElementById("confirm-pin").value = "";
  document.getElementById("confirm-error").classList.add("hidden");
  const dialog = document.getElementById("confirm-dialog");
  if (!dialog.open) dialog.showModal();
}

async function decide(c, verb, pin) {
  const body = verb === "approve" ? (pin ? { pin } : {}) : undefined;
  const result = await api("POST", `/confirmations/${encodeURIComponent(c.id)}/${verb}`, body);
  state.pending.delete(c.id);
  renderConfirmations();
  renderDashboard();
  toast(verb === "approve" ? `Approved: ${pretty(c.action)} ${c.device}` : "Cancelled");
  return result;
}

function setupDialog() {
  const dialog = document.getElementById("confirm-dialog");
  const error = document.getElementById("confirm-error");
  document.getElementById("confirm-yes").addEventListener("click", async () => {
    const c = dialogConfirmation;
    if (!c) return dialog.close();
    try {
      await decide(c, "approve", document.getElementById("confirm-pin").value || null);
      dialog.close();
    } catch (err) {
      error.textContent = err.message;
      error.classList.remove("hidden");
    }
  });
  document.getElementById("confirm-no").addEventListener("click", async () => {
    const c = dialogConfirmation;
    dialog.close();
    if (c && state.pending.has(c.id)) await guarded(() => decide(c, "cancel"));
  });
}

function upsertPending(c) {
  if (c.state === "pending") state.pending.set(c.id, c); else state.pending.delete(c.id);
  renderConfirmations();
  renderDashboard();
}

function confirmationItem(c, pending) {
  const actions = [];
  if (pending) {
    const pin = c.level === "pin" ? el("input", { type: "password", inputmode: "numeric", placeholder: "PIN",
      "aria-label": "PIN", autocomplete: "off", size: "6" }) : null;
    actions.push(pin,
      el("button", { type: "button", class: "danger", "data-approve": c.id,
        onclick: () => guarded(() => decide(c, "approve", pin ? pin.value : null)) }, "Approve"),
      el("button", { type: "button", class: "secondary", "data-cancel": c.id,
        onclick: () => guarded(() => decide(c, "cancel")) }, "Cancel"));
  }
  return el("div", { class: "item" + (pending ? " hazard" : ""), "data-confirmation": c.id, "data-state": c.state },
    el("div", { class: "main" },
      el("div", { text: c.prompt }),
      el("div", { class: "meta", text: `${c.state} · ${c.hazard_class} · ${c.level} · by ${c.requested_by} · ${fmtTime(c.created_at)}` })),
    el("div", { class: "actions" }, ...actions));
}

function renderConfirmations() {
  const pending = [...state.pending.values()];
  document.getElementById("pending-list").replaceChildren(
    ...(pending.length ? pending.map(c => confirmationItem(c, true)) : [el("p", { class: "empty", text: "Nothing waiting." })]));
  const recent = state.recent.filter(c => c.state !== "pending").slice(0, 20);
  document.getElementById("recent-confirmations").replaceChildren(
    ...(recent.length ? recent.map(c => confirmationItem(c, false)) : [el("p", { class: "empty", text: "None yet." })]));
}

// --- routines -----------------------------------------------------------------------------------------

function renderJobs() {
  const items = state.jobs.map(j => el("div", { class: "item", "data-job": j.name },
    el("div", { class: "main" },
      el("div", { text: pretty(j.name) }),
      el("div", { class: "meta", text: `${j.expr || ""} · next ${fmtTime(j.next_run_at)} · last ${j.last_status || "never"}` })),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary", "data-run": j.name, onclick: () => runJob(j.name) }, "Run now"))));
  document.getElementById("job-list").replaceChildren(
    ...(items.length ? items : [el("p", { class: "empty", text: "No routines (is the job service running?)" })]));
}

function renderRuns() {
  const runs = [...state.runs.values()].sort((a, b) => b.id - a.id).slice(0, 50);
  const cls = s => s === "succeeded" ? "ok" : ["failed", "dead", "timed_out"].includes(s) ? "bad" : "warn";
  document.getElementById("run-list").replaceChildren(...(runs.length ? runs.map(r =>
    el("div", { class: "item", "data-run-id": String(r.id), "data-job-run": r.job },
      el("div", { class: "main" },
        el("div", {}, `${pretty(r.job)} #${r.id} `, el("span", { class: cls(r.status), text: r.status })),
        el("div", { class: "meta", text: `${r.trigger || ""} · ${fmtTime(r.created_at)}` +
          (r.duration_ms != null ? ` · ${Math.round(r.duration_ms)} ms` : "") + (r.last_error ? ` · ${r.last_error}` : "") }))))
    : [el("p", { class: "empty", text: "No runs yet." })]));
}

async function runJob(name) {
  await guarded(async () => {
    const result = await api("POST", `/jobs/${encodeURIComponent(name)}/run`);
    state.runs.set(result.run_id, { id: result.run_id, job: name, status: "scheduled", trigger: "manual",
      created_at: new Date().toISOString() });
    renderRuns();
    toast(`${pretty(name)} queued (run ${result.run_id})`);
  });
}

// --- cache --------------------------------------------------------------------------------------------

function renderCache() {
  const c = state.cache;
  const box = document.getElementById("cache-stats");
  if (!c) { box.replaceChildren(el("p", { class: "empty", text: "The cache is not running." })); return; }
  box.replaceChildren(
    card("Entries", String(c.entries ?? "?")), card("Hit ratio", `${Math.round((c.hit_ratio || 0) * 100)}%`),
    card("Hits", String(c.hits)), card("Misses", String(c.misses)), card("Evictions", String(c.evictions)),
    card("Backend", c.degraded ? "degraded" : "OK", "", c.degraded ? "bad" : "ok"));
}

function setupCacheForm() {
  const scope = document.getElementById("inv-scope");
  const value = document.getElementById("inv-value");
  scope.addEventListener("change", () => value.classList.toggle("hidden", scope.value === "all"));
  document.getElementById("invalidate").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = scope.value === "all" ? { all: true } : { [scope.value]: value.value.trim() };
    if (scope.value !== "all" && !body[scope.value]) { toast("Type a question or a tag", true); return; }
    const result = await guarded(() => api("POST", "/cache/invalidate", body));
    if (result) { toast(`Removed ${result.removed} entr${result.removed === 1 ? "y" : "ies"}`); await loadCache(); }
  });
}

// --- audit --------------------------------------------------------------------------------------------

async function loadAudit() {
  const params = new URLSearchParams({ limit: "25" });
  if (state.audit.before) params.set("before_id", String(state.audit.before));
  const kind = document.getElementById("audit-kind").value.trim();
  const subject = document.getElementById("audit-subject").value.trim();
  if (kind) params.set("kind", kind);
  if (subject) params.set("subject", subject);
  const page = await guarded(() => api("GET", `/audit?${params}`));
  if (!page) return;
  state.audit.next = page.next_before_id;
  document.getElementById("audit-older").disabled = !page.next_before_id;
  document.getElementById("audit-newer").disabled = state.audit.stack.length === 0;
  document.getElementById("audit-list").replaceChildren(...(page.events.length ? page.events.map(e =>
    el("div", { class: "item", "data-event": String(e.id) },
      el("div", { class: "main" },
        el("div", {}, el("b", { text: e.kind }), e.subject ? ` · ${e.subject}` : ""),
        el("div", { class: "meta", text: `#${e.id} · ${fmtTime(e.at)} · ${e.actor}` +
          (e.correlation_id ? ` · ${e.correlation_id}` : "") }),
        el("div", { class: "meta", text: JSON.stringify(e.body) }))))
    : [el("p", { class: "empty", text: "No events." })]));
}

function setupAudit() {
  document.getElementById("audit-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.audit = { before: null, stack: [], next: null };
    loadAudit();
  });
  document.getElementById("audit-older").addEventListener("click", () => {
    state.audit.stack.push(state.audit.before);
    state.audit.before = state.audit.next;
    loadAudit();
  });
  document.getElementById("audit-newer").addEventListener("click", () => {
    state.audit.before = state.audit.stack.pop() ?? null;
    loadAudit();
  });
}

// --- loading ------------------------------------------------------------------------------------------

async function optional(path) {
  // A service may be switched off (503): the panel shows it as not running instead of failing.
  try { return await api("GET", path); } catch (err) { if (err.status === 503) return null; throw err; }
}

async function loadCache() { state.cache = await optional("/cache/stats"); renderCache(); renderDashboard(); }

async function loadAll() {
  await guarded(async () => {
    const [status, devices, pending, recent, jobs, history, cache] = await Promise.all([
      api("GET", "/status"), optional("/devices"), optional("/confirmations?state=pending"),
      optional("/confirmations?limit=20"), optional("/jobs"), optional("/jobs/history?limit=30"),
      optional("/cache/stats"),
    ]);
    state.status = status;
    state.devices = new Map((devices?.devices || []).map(d => [d.name, d]));
    state.pending = new Map((pending?.confirmations || []).map(c => [c.id, c]));
    state.recent = recent?.confirmations || [];
    state.jobs = jobs?.jobs || [];
    state.runs = new Map((history?.runs || []).map(r => [r.id, r]));
    state.cache = cache;
    renderDevices(); renderConfirmations(); renderJobs(); renderRuns(); renderCache(); renderDashboard();
  });
  await loadAudit();
}

// --- live ---------------------------------------------------------------------------------------------

let liveDelay = 1000;
function connectLive() {
  const pill = document.getElementById("live");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${API}/live`);
  ws.addEventListener("open", () => {
    pill.textContent = "live"; pill.className = "pill on"; liveDelay = 1000;
  });
  ws.addEventListener("message", (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    // (Re)connected: reload once, so nothing that changed before the channel was up is missed.
    if (msg.type === "hello") { loadAll(); return; }
    if (msg.type === "device") {
      const d = state.devices.get(msg.device.name);
      if (!d) return;
      Object.assign(d, { state: msg.device.state, available: msg.device.available, updated_at: msg.device.updated_at });
      const old = document.querySelector(`[data-device="${CSS.escape(d.name)}"]`);
      if (old) old.replaceWith(deviceCard(d)); else renderDevices();
    } else if (msg.type === "confirmation") {
      const c = msg.confirmation;
      state.recent = [c, ...state.recent.filter(r => r.id !== c.id)].slice(0, 50);
      upsertPending(c);
      if (dialogConfirmation && dialogConfirmation.id === c.id && c.state !== "pending") {
        document.getElementById("confirm-dialog").close();
      }
    } else if (msg.type === "job_run") {
      state.runs.set(msg.run.id, msg.run);
      renderRuns();
    }
  });
  ws.addEventListener("close", () => {
    pill.textContent = "offline"; pill.className = "pill off";
    setTimeout(connectLive, liveDelay);
    liveDelay = Math.min(liveDelay * 2, 30000);
  });
}

// --- start --------------------------------------------------------------------------------------------

async function main() {
  window.addEventListener("hashchange", showTab);
  showTab();
  setupDialog();
  setupCacheForm();
  setupAudit();
  const session = await guarded(() => api("GET", "/session"));
  if (!session) return;
  state.csrf = session.csrf;
  document.getElementById("logout-csrf").value = session.csrf || "";
  await loadAll();
  connectLive();
  setInterval(async () => {   // the numbers that have no push channel: status and cache counters
    state.status = await optional("/status") || state.status;
    await loadCache();
  }, 15000);
}

document.addEventListener("DOMContentLoaded", main);
