// fleet's dashboard: the hosts, the run in view, the history and the logs, kept live by the
// event stream (GET /api/events). Plain JavaScript, no build step. Every value from the server
// goes into the page as text (textContent, attributes), never as HTML.
"use strict";

const TAIL_BYTES = 16384;
const FINISHED_OPS = new Set(["SUCCESS", "FAILED", "TIMEOUT", "SKIPPED", "CANCELLED"]);
const OP_MARK = {
  PENDING: "·", RUNNING: "▶", SUCCESS: "✓", FAILED: "✗", TIMEOUT: "⏱", SKIPPED: "–",
  CANCELLED: "⊘",
};

const state = {
  hosts: [], // GET /api/hosts
  pipelines: new Map(), // id -> GET /api/pipelines item
  runs: new Map(), // run_id -> Run (as GET /api/runs/{id}), the runs followed live
  history: [], // GET /api/runs
  local: new Set(), // runs this service started (it can cancel them)
  focus: null, // the run_id shown in the run panel
  selected: new Set(), // host names ticked in the hosts table
  clockOffset: 0, // server clock minus this browser's, in ms
  log: null, // {runId, host, op, whole} shown in the log dialog
};

const $ = (id) => document.getElementById(id);

// -- talking to the server ------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) {
    location.assign("/login");
    throw new Error("logged out");
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

async function reload() {
  try {
    const [hosts, pipelines, history] = await Promise.all([
      api("/api/hosts"), api("/api/pipelines"), api("/api/runs?limit=30"),
    ]);
    state.hosts = hosts;
    state.pipelines = new Map(pipelines.map((p) => [p.id, p]));
    state.history = history;
    for (const summary of history) {
      if (summary.cancellable) state.local.add(summary.run_id);
    }
    const wanted = history.filter((r) => r.status === "RUNNING").map((r) => r.run_id);
    const latest = history[0] && history[0].run_id;
    if (!state.focus && latest) state.focus = latest;
    if (state.focus) wanted.push(state.focus);
    await Promise.all([...new Set(wanted)].map(fetchRun));
    showMessage("");
  } catch (error) {
    showMessage(`Cannot load the fleet: ${error.message}`);
  }
  render();
}

async function fetchRun(runId) {
  const run = await api(`/api/runs/${encodeURIComponent(runId)}`);
  state.runs.set(run.run_id, run);
  return run;
}

let hostsTimer = null;
function refreshSoon() {
  // A run finished: the hosts' last runs, systems and the history changed on the server.
  clearTimeout(hostsTimer);
  hostsTimer = setTimeout(async () => {
    try {
      const [hosts, history] = await Promise.all([api("/api/hosts"), api("/api/runs?limit=30")]);
      state.hosts = hosts;
      state.history = history;
      render();
    } catch (error) {
      showMessage(error.message);
    }
  }, 150);
}

// -- the live stream ------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/events");
  source.onmessage = (message) => handle(JSON.parse(message.data));
  source.onerror = () => {
    setConnection("reconnecting", "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      // refused (the session ended, or the service restarted): check, then open a new one
      setTimeout(() => api("/api/runs?limit=1").then(connect, connect), 3000);
    }
  };
}

function setConnection(name, text) {
  const el = $("connection");
  el.dataset.state = name;
  el.textContent = text;
}

function newer(a, b) {
  return !b || Date.parse(a.started_at || 0) >= Date.parse(b.started_at || 0);
}

function handle(msg) {
  switch (msg.event) {
    case "hello":
      state.clockOffset = Date.parse(msg.server_time) - Date.now();
      setConnection("live", "live");
      reload();
      return;
    case "resync":
      reload();
      return;
    case "run_started":
      state.local.add(msg.run.run_id);
    // falls through
    case "run_updated":
    case "run_finished": {
      const run = msg.run;
      const focused = state.runs.get(state.focus);
      state.runs.set(run.run_id, run);
      if (msg.event === "run_started" || (run.status === "RUNNING" && newer(run, focused))) {
        state.focus = run.run_id;
      }
      upsertHistory(run);
      if (run.status !== "RUNNING") refreshSoon();
      break;
    }
    case "op_started":
    case "op_finished":
    case "op_slow":
    case "host_finished":
      if (!applyToRun(msg)) {
        fetchRun(msg.run_id).then(render, () => {});
        return;
      }
      break;
    default:
      return;
  }
  render();
}

function opsOf(run, host) {
  if (host === null) return run.controller.ops;
  return run.hosts[host] ? run.hosts[host].ops : null;
}

function applyToRun(msg) {
  const run = state.runs.get(msg.run_id);
  if (!run) return false;
  if (msg.event === "host_finished") {
    run.hosts[msg.host] = msg.result;
    return true;
  }
  const ops = opsOf(run, msg.host);
  if (!ops) return false;
  const name = msg.event === "op_finished" ? msg.result.op : msg.op;
  let index = ops.findIndex((o) => o.op === name);
  if (index < 0) {
    ops.push({ op: name, status: "PENDING" });
    index = ops.length - 1;
  }
  if (msg.event === "op_started") {
    ops[index] = { ...ops[index], status: "RUNNING", started_at: msg.started_at,
      finished_at: null, attempts: msg.attempt };
    if (msg.host !== null) run.hosts[msg.host].status = "RUNNING";
  } else if (msg.event === "op_finished") {
    ops[index] = { ...ops[index], ...msg.result, slow: false };
  } else {
    ops[index] = { ...ops[index], slow: true };
  }
  return true;
}

function upsertHistory(run) {
  const ok = Object.values(run.hosts).filter((h) => h.status === "COMPLETE").length;
  const failed = Object.values(run.hosts).filter((h) => h.status === "FAILED").length;
  const summary = {
    run_id: run.run_id, pipeline: run.pipeline, status: run.status, started_at: run.started_at,
    finished_at: run.finished_at, retry_of: run.retry_of, hosts_total: Object.keys(run.hosts).length,
    hosts_ok: ok, hosts_failed: failed,
    cancellable: run.status === "RUNNING",
  };
  const index = state.history.findIndex((r) => r.run_id === run.run_id);
  if (index >= 0) state.history[index] = summary;
  else state.history.unshift(summary);
}

// -- actions --------------------------------------------------------------------------------

async function startRun(pipeline, extra = {}) {
  const on = state.selected.size ? [...state.selected] : null;
  showMessage("");
  try {
    const answer = await api("/api/runs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pipeline, on, ...extra }),
    });
    state.focus = answer.run_id;
    state.local.add(answer.run_id);
    if (!state.runs.has(answer.run_id)) await fetchRun(answer.run_id);
    render();
  } catch (error) {
    showMessage(`${pipeline}: ${error.message}`);
  }
}

async function cancelRun() {
  const runId = state.focus;
  if (!runId) return;
  try {
    await api(`/api/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
    showMessage("");
  } catch (error) {
    showMessage(`Cancel: ${error.message}`);
  }
}

function showMessage(text) {
  const el = $("message");
  el.textContent = text;
  el.hidden = !text;
}

// -- rendering helpers ----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// Replace a node's children only when what they show changed (keeps keyboard focus).
function fill(node, key, build) {
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  node.replaceChildren(...build());
}

function now() {
  return Date.now() + state.clockOffset;
}

function elapsed(since, until) {
  const end = until ? Date.parse(until) : now();
  const total = Math.max(0, Math.round((end - Date.parse(since)) / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function shortSystem(path) {
  if (!path) return "?";
  const name = path.replace(/\/+$/, "").split("/").pop();
  const store = /^[0-9a-z]{32}-(.*)$/.exec(name);
  return store ? store[1] : name;
}

function badge(status) {
  return el("span", { class: "badge", "data-status": status, text: status });
}

function opChip(runId, host, op) {
  const label = `${op.op}: ${op.status}${op.error ? ` (${op.error})` : ""}`;
  return el(
    "button",
    {
      type: "button",
      class: `op${op.slow ? " slow" : ""}`,
      "data-op": op.op,
      "data-status": op.status,
      title: label,
      "aria-label": `${label}. Open its log.`,
      onclick: () => openLog(runId, host, op.op),
    },
    el("span", { class: "mark", "aria-hidden": "true", text: OP_MARK[op.status] || "?" }),
    el("span", { class: "name", text: op.op }),
    el("span", { class: "status", text: op.status }),
  );
}

function chips(runId, host, ops) {
  const out = [];
  ops.forEach((op, i) => {
    if (i) out.push(el("span", { class: "arrow", "aria-hidden": "true", text: "→" }));
    out.push(opChip(runId, host, op));
  });
  return out;
}

// -- the hosts table ------------------------------------------------------------------------

// What a host's row shows: the newest run that includes it, live if the page follows it.
function hostView(host) {
  let live = null;
  for (const run of state.runs.values()) {
    if (run.hosts[host.name] && newer(run, live)) live = run;
  }
  const last = host.last_run;
  if (live && (!last || live.run_id === last.run_id || newer(live, last))) {
    const result = live.hosts[host.name];
    return { runId: live.run_id, runStatus: live.status, status: result.status,
      failedOp: result.failed_op, ops: result.ops };
  }
  if (!last) return null;
  return { runId: last.run_id, runStatus: last.run_status, status: last.status,
    failedOp: last.failed_op, ops: last.ops };
}

function systemOf(host, view) {
  const ops = view ? view.ops : [];
  for (let i = ops.length - 1; i >= 0; i -= 1) {
    if (ops[i].system_after || ops[i].system_before) {
      return { before: ops[i].system_before, after: ops[i].system_after };
    }
  }
  return host.system;
}

const rows = new Map(); // host name -> its <tr>

function hostRow(host) {
  let tr = rows.get(host.name);
  if (tr) return tr;
  const box = el("input", {
    type: "checkbox", "aria-label": `Select ${host.name}`,
    onchange: (e) => {
      if (e.target.checked) state.selected.add(host.name);
      else state.selected.delete(host.name);
      renderTarget();
    },
  });
  tr = el("tr", { "data-host": host.name },
    el("td", { class: "pick", "data-label": "Select" }, box),
    el("th", { scope: "row", class: "name", "data-label": "Host" }),
    el("td", { class: "tags", "data-label": "Tags" }),
    el("td", { class: "address", "data-label": "Address" }),
    el("td", { class: "ops", "data-label": "Last run" }),
    el("td", { class: "now", "data-label": "Now" }),
    el("td", { class: "system", "data-label": "System" }),
  );
  rows.set(host.name, tr);
  return tr;
}

function renderHosts() {
  const tbody = $("hosts").tBodies[0];
  const names = new Set(state.hosts.map((h) => h.name));
  for (const [name, tr] of rows) {
    if (!names.has(name)) { tr.remove(); rows.delete(name); state.selected.delete(name); }
  }
  state.hosts.forEach((host, index) => {
    const tr = hostRow(host);
    if (tbody.children[index] !== tr) tbody.insertBefore(tr, tbody.children[index] || null);
    const view = hostView(host);
    const cells = tr.cells;
    tr.dataset.status = view ? view.status : "NONE";
    cells[0].firstChild.checked = state.selected.has(host.name);
    cells[1].textContent = host.name;
    cells[2].textContent = host.tags.join(", ");
    cells[3].textContent = host.port === 22 ? host.address : `${host.address}:${host.port}`;
    const opsKey = JSON.stringify(view && [view.runId, view.status, view.failedOp,
      view.ops.map((o) => [o.op, o.status, o.error, o.slow])]);
    fill(cells[4], opsKey, () => {
      if (!view) return [el("span", { class: "hint", text: "never run" })];
      const out = chips(view.runId, host.name, view.ops);
      if (view.status === "FAILED") {
        out.unshift(el("span", { class: "failed-mark",
          text: `FAILED${view.failedOp ? ` at ${view.failedOp}` : ""}` }));
      }
      return out;
    });
    const running = view && view.runStatus === "RUNNING"
      ? view.ops.find((o) => o.status === "RUNNING") : null;
    cells[5].textContent = running ? `${running.op} ${elapsed(running.started_at)}` : "";
    const system = systemOf(host, view);
    fill(cells[6], JSON.stringify(system), () => {
      if (!system) return [];
      const changed = system.before !== system.after;
      return [
        el("span", { title: system.before || "", text: shortSystem(system.before) }),
        el("span", { class: "arrow", "aria-hidden": "true", text: " → " }),
        el("span", { class: changed ? "changed" : "", title: system.after || "",
          text: shortSystem(system.after) }),
      ];
    });
  });
  const all = $("select-all");
  all.checked = state.hosts.length > 0 && state.selected.size === state.hosts.length;
  all.indeterminate = state.selected.size > 0 && !all.checked;
}

function renderTarget() {
  const names = [...state.selected];
  $("target").textContent = names.length
    ? `On ${names.length} selected host${names.length > 1 ? "s" : ""}: ${names.join(", ")}.`
    : "On all hosts.";
}

// -- the run panel and the history ----------------------------------------------------------

function renderRun() {
  const run = state.runs.get(state.focus);
  $("run-panel").hidden = !run;
  if (!run) return;
  $("run-pipeline").textContent = `${run.pipeline} · ${run.run_id}`;
  const status = $("run-status");
  status.textContent = run.status;
  status.dataset.status = run.status;
  const hosts = Object.entries(run.hosts);
  const ok = hosts.filter(([, h]) => h.status === "COMPLETE").length;
  const took = run.started_at ? elapsed(run.started_at, run.finished_at) : "";
  const timing = run.finished_at ? `took ${took}` : `running for ${took}`;
  $("run-meta").textContent = `Started ${when(run.started_at)} · ${timing} · `
    + `${ok} of ${hosts.length} host${hosts.length === 1 ? "" : "s"} complete`
    + (run.options && run.options.on ? ` · on ${run.options.on}` : "");
  const tbody = $("run-hosts").tBodies[0];
  const lines = run.controller.ops.length ? [["controller", null, { status: "", ops:
    run.controller.ops }]] : [];
  for (const [name, h] of hosts) lines.push([name, name, h]);
  const key = JSON.stringify([run.run_id, lines.map(([n, , h]) =>
    [n, h.status, h.ops.map((o) => [o.op, o.status, o.slow])])]);
  fill(tbody, key, () => lines.map(([label, host, h]) => el("tr",
    { "data-host": label, "data-status": h.status },
    el("th", { scope: "row", "data-label": "Host", text: label }),
    el("td", { class: "ops", "data-label": "Ops" }, ...chips(run.run_id, host, h.ops)),
    el("td", { "data-label": "Status" }, h.status ? badge(h.status) : null),
  )));
  const cancel = $("cancel");
  // Runs of this service and of fleet processes on this machine can be cancelled from here;
  // the service says so when it cannot (another machine or user).
  const cancellable = run.status === "RUNNING";
  cancel.disabled = !cancellable;
  cancel.title = cancellable ? `Cancel run ${run.run_id}` : "No run in progress";
}

function renderHistory() {
  const tbody = $("history").tBodies[0];
  const key = JSON.stringify([state.focus, state.history.map((r) =>
    [r.run_id, r.status, r.hosts_ok, r.hosts_total])]);
  fill(tbody, key, () => state.history.map((r) => el("tr",
    { "data-run": r.run_id, class: r.run_id === state.focus ? "focus" : "" },
    el("td", { "data-label": "Run" }, el("button", {
      type: "button", class: "link", text: r.run_id,
      "aria-label": `Show run ${r.run_id}`,
      "aria-current": r.run_id === state.focus ? "true" : null,
      onclick: () => focusRun(r.run_id),
    })),
    el("td", { "data-label": "Pipeline", text: r.pipeline }),
    el("td", { "data-label": "Status" }, badge(r.status)),
    el("td", { "data-label": "Started", text: when(r.started_at) }),
    el("td", { "data-label": "Hosts OK", text: `${r.hosts_ok}/${r.hosts_total}` }),
  )));
}

async function focusRun(runId) {
  state.focus = runId;
  try {
    await fetchRun(runId);
  } catch (error) {
    showMessage(error.message);
  }
  render();
}

let frame = 0;
function render() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    renderHosts();
    renderRun();
    renderHistory();
    renderTarget();
    if (state.log) renderLogMeta();
  });
}

// -- logs -----------------------------------------------------------------------------------

let logTimer = null;

function logOp() {
  const { runId, host, op } = state.log;
  const run = state.runs.get(runId);
  const ops = run ? opsOf(run, host) : null;
  return ops ? ops.find((o) => o.op === op) : null;
}

function renderLogMeta() {
  const { runId, host, op } = state.log;
  const info = logOp();
  $("log-title").textContent = `${host || "controller"} · ${op}`;
  $("log-meta").textContent = `Run ${runId}${info ? ` · ${info.status}` : ""}`
    + (info && info.error ? ` · ${info.error}` : "");
}

async function openLog(runId, host, op) {
  state.log = { runId, host, op, whole: false };
  if (!state.runs.has(runId)) {
    try { await fetchRun(runId); } catch { /* the log may still be there */ }
  }
  renderLogMeta();
  $("log-text").textContent = "loading…";
  const dialog = $("log-dialog");
  if (!dialog.open) dialog.showModal();
  await loadLog();
}

async function loadLog() {
  clearTimeout(logTimer);
  if (!state.log) return;
  const { runId, host, op, whole } = state.log;
  const query = new URLSearchParams({ host: host || "controller", op });
  if (!whole) query.set("last", String(TAIL_BYTES));
  const pre = $("log-text");
  try {
    const response = await fetch(`/api/runs/${encodeURIComponent(runId)}/logs?${query}`,
      { credentials: "same-origin" });
    const text = await response.text();
    if (!state.log || state.log.runId !== runId || state.log.op !== op) return;
    if (!response.ok) {
      pre.textContent = (() => { try { return JSON.parse(text).error; } catch { return text; } })();
      return;
    }
    const size = Number(response.headers.get("X-Log-Size") || 0);
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = text || "(no output)";
    if (atEnd) pre.scrollTop = pre.scrollHeight;
    const button = $("log-whole");
    const partial = !whole && size > new TextEncoder().encode(text).length;
    button.hidden = !partial;
    button.textContent = `Show the whole log (${Math.ceil(size / 1024)} KiB)`;
  } catch (error) {
    pre.textContent = `Cannot load the log: ${error.message}`;
  }
  const info = logOp();
  if (info && !FINISHED_OPS.has(info.status)) logTimer = setTimeout(loadLog, 1000);
}

function closeLog() {
  clearTimeout(logTimer);
  state.log = null;
  const dialog = $("log-dialog");
  if (dialog.open) dialog.close();
}

// -- wiring ---------------------------------------------------------------------------------

function setup() {
  for (const button of document.querySelectorAll("button[data-pipeline]")) {
    const pipeline = button.dataset.pipeline;
    button.addEventListener("click", () => {
      const known = state.pipelines.get(pipeline);
      if (known && known.needs_pr) {
        $("pr-number").value = "";
        $("pr-dialog").showModal();
        return;
      }
      startRun(pipeline);
    });
  }
  $("pr-form").addEventListener("submit", () => {
    const pr = Number($("pr-number").value);
    if (Number.isInteger(pr) && pr > 0) startRun("merge-deploy", { pr });
  });
  $("pr-cancel").addEventListener("click", () => $("pr-dialog").close());
  $("cancel").addEventListener("click", cancelRun);
  $("select-all").addEventListener("change", (e) => {
    state.selected = e.target.checked ? new Set(state.hosts.map((h) => h.name)) : new Set();
    render();
  });
  $("log-close").addEventListener("click", closeLog);
  $("log-dialog").addEventListener("close", () => { clearTimeout(logTimer); state.log = null; });
  $("log-whole").addEventListener("click", () => {
    if (state.log) { state.log.whole = true; loadLog(); }
  });
  setInterval(() => {
    for (const run of state.runs.values()) {
      if (run.status === "RUNNING") { render(); return; }
    }
  }, 1000);
  connect();
}

document.addEventListener("DOMContentLoaded", setup);
