/* relaytrain dashboard: plain script, no build step. Reads the commander's API (/api/v1) with
   the bearer token kept in this tab's sessionStorage (or none, on a loopback commander without
   tokens), redraws the page every few seconds, and keeps the last data on screen, under a banner,
   while the commander cannot be reached. docs/dashboard.md says what each page shows. */
"use strict";

const TOKEN_KEY = "relaytrain.token";
const REFRESH_MS = 3000;
const MAX_POINTS = 2000;           // per series: what a chart can show (the server downsamples)
const HEADLINE = ["loss", "reward_mean"];  // the runs page's "latest" column, in this order
const PAGE_SIZE = 50;             // runs per page of the runs page

// -- the API ------------------------------------------------------------------------------------

class Unreachable extends Error {}
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, {method = "GET", body} = {}) {
  const headers = {Accept: "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {method, headers, cache: "no-store",
                              body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    throw new Unreachable(String(err.message || err));
  }
  if (resp.status >= 500) throw new Unreachable(`HTTP ${resp.status}`);
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const enc = encodeURIComponent;
const runPath = (id, rest = "") => `api/v1/runs/${enc(id)}${rest}`;

/** GET that answers null for a 404 (an endpoint this commander lacks, or nothing there yet). */
async function optional(path) {
  try {
    return await api(path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

// -- HTML ---------------------------------------------------------------------------------------

class Raw { constructor(s) { this.s = s; } }
const raw = (s) => new Raw(s);
function esc(v) {
  if (v instanceof Raw) return v.s;
  if (Array.isArray(v)) return v.map(esc).join("");
  if (v === null || v === undefined) return "";
  return String(v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function h(strings, ...values) {
  return raw(strings.reduce((out, s, i) => out + s + (i < values.length ? esc(values[i]) : ""), ""));
}

const dash = "–";
function num(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return dash;
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(digits);
}
function ago(ts) {
  if (!ts) return dash;
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${(s / 3600).toFixed(1)}h`;
  return `${Math.round(s / 86400)}d`;
}
const compact = new Intl.NumberFormat("en", {notation: "compact", maximumFractionDigits: 2});
const tick = (v) => (Math.abs(v) >= 1e4 ? compact.format(v) : num(v, 2));
const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : dash);
const stamp = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : dash);
const duration = (s) => (s === null || s === undefined ? dash : s < 120 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`);
const badge = (status) => h`<span class="badge s-${status || "queued"}">${status || "running"}</span>`;
// A queued run that no live worker or host can take shows "unschedulable", its reason on hover.
const runBadge = (run) => run.unschedulable
  ? h`<span class="badge s-unschedulable" title="${run.unschedulable}">unschedulable</span>` : badge(run.status);
function progress(step, max) {
  const pct = max > 0 ? Math.min(100, (100 * step) / max) : 0;
  return h`<div class="progress" title="${step} / ${max}"><span style="width:${pct.toFixed(1)}%"></span><em>${step} / ${max}</em></div>`;
}
function table(headers, rows, empty = "none") {
  if (!rows.length) return h`<p class="muted">${empty}</p>`;
  const head = headers.map((c) => h`<th class="${/^#/.test(c) ? "num" : ""}">${c.replace(/^#/, "")}</th>`);
  return h`<table><thead><tr>${head}</tr></thead><tbody>${rows.map((r) => h`<tr>${r}</tr>`)}</tbody></table>`;
}
const td = (v, cls = "") => h`<td class="${cls}">${v}</td>`;
const tdn = (v) => td(v, "num");

// -- the page's frame: route, token, refresh, banner ---------------------------------------------

const page = document.getElementById("page");
const banner = document.getElementById("banner");
const tokenForm = document.getElementById("token-form");
let timer = null;
let generation = 0;       // the newest refresh; an older one still in flight draws nothing
let lastGood = null;      // when the commander last answered
let downSince = null;     // since when it has not
let statuses = null;      // RunStatus values, from the OpenAPI document

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "runs" && parts[1]) return {page: "run", id: parts[1], params};
  if (parts[0] === "workers") return {page: "workers", params};
  return {page: "runs", params};
}

function takeTokenFromHash() {
  // `relay demo` prints /#token=…: keep it for this tab and take it out of the address bar at once.
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
}

function setReachable(ok, why) {
  if (ok) {
    lastGood = Date.now();
    downSince = null;
    banner.hidden = true;
    document.getElementById("refreshed").textContent = `updated ${new Date(lastGood).toLocaleTimeString()}`;
    return;
  }
  downSince = downSince || Date.now();
  banner.hidden = false;
  const shown = lastGood ? `showing the data of ${new Date(lastGood).toLocaleTimeString()}` : "nothing to show yet";
  banner.textContent = `The commander is unreachable (${why}) since ${new Date(downSince).toLocaleTimeString()}; `
    + `${shown}. Retrying every ${REFRESH_MS / 1000} s.`;
}

function askToken(reason) {
  tokenForm.hidden = false;
  document.getElementById("token-reason").textContent = reason;
  page.innerHTML = "";
}

tokenForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token-input");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  tokenForm.hidden = true;
  refresh();
});
document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  const r = route();
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === (r.page === "run" ? "runs" : r.page));
  }
  document.getElementById("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  try {
    if (statuses === null) statuses = await runStatuses();
    const draw = await PAGES[r.page](r);   // every fetch first: a failure leaves the last page on screen
    if (mine !== generation) return;       // the address changed meanwhile: that refresh draws
    draw();
    tokenForm.hidden = true;
    setReachable(true);
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof Unreachable) {
      setReachable(false, err.message);
    } else if (err instanceof ApiError && err.status === 401) {
      setReachable(true);
      askToken(sessionStorage.getItem(TOKEN_KEY)
        ? `The commander refused this token (${err.message}). Give another.`
        : "This commander needs a token: a viewer token (relay token create --scope viewer) or the admin's.");
      return;  // no refresh until a token is given
    } else if (err instanceof ApiError && err.status === 403) {
      setReachable(true);
      askToken(`This token cannot read the dashboard's data (${err.message}). Give a viewer, submit or admin token.`);
      return;
    } else {
      page.innerHTML = esc(h`<div class="message error">${err.message || err}</div>`);
      console.error(err);
    }
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

async function runStatuses() {
  // The one list of run statuses is the API's (RunStatus in its OpenAPI document).
  try {
    const doc = await fetch("openapi.json", {cache: "no-store"}).then((r) => (r.ok ? r.json() : null));
    return (doc && doc.components.schemas.RunStatus && doc.components.schemas.RunStatus.enum) || null;
  } catch (_) {
    return null;   // asked again at the next refresh
  }
}

// -- the runs page ---------------------------------------------------------------------------------

const extras = new Map();   // run_id -> {latest, ettr, final}: a finished run's are fetched once

async function runExtras(run) {
  const known = extras.get(run.run_id);
  if (known && known.final) return known;
  const [latest, ledger] = await Promise.all([latestMetrics(run.run_id), optional(runPath(run.run_id, "/ledger"))]);
  const value = {latest, ettr: ledger ? ledger.total.ettr : null, final: run.finished_at !== null};
  extras.set(run.run_id, value);
  return value;
}

async function latestMetrics(runId) {
  // Each series' first and last point (ordered by name, then step): the last one is the latest.
  const data = await api(runPath(runId, `/metrics?name=${enc(HEADLINE.join(","))}&max_points=2`));
  const out = {};
  for (const p of data.items) out[p.name] = p;
  return out;
}

async function limited(items, n, fn) {
  const out = new Array(items.length);
  let next = 0;
  const work = async () => { while (next < items.length) { const i = next++; out[i] = await fn(items[i]); } };
  await Promise.all(Array.from({length: Math.min(n, items.length)}, work));
  return out;
}

function runsHash(status, offset) {
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (offset) q.set("offset", String(offset));
  return q.toString() ? `#/?${q}` : "#/";
}

async function runsPage(r) {
  const status = r.params.get("status") || "";
  const offset = Math.max(0, parseInt(r.params.get("offset") || "0", 10) || 0);
  const list = await api(`api/v1/runs?limit=${PAGE_SIZE}&offset=${offset}${status ? `&status=${enc(status)}` : ""}`);
  const more = await limited(list.items, 6, runExtras);
  return () => {
    const options = ["", ...(statuses || [...new Set(list.items.map((x) => x.status))])];
    const select = h`<select id="status-filter">${options.map((s) =>
      h`<option value="${s}" ${s === status ? raw("selected") : ""}>${s || "all statuses"}</option>`)}</select>`;
    const rows = list.items.map((run, i) => {
      const x = more[i];
      const shown = HEADLINE.filter((n) => x.latest[n]).map((n) => `${n} ${num(x.latest[n].value)}`).join(", ");
      return raw([
        h`<td><a href="#/runs/${enc(run.run_id)}">${run.run_id}</a></td>`, td(run.kind), td(runBadge(run)),
        td(progress(run.step, run.max_steps)), td(run.holder || dash), tdn(run.epoch),
        tdn(Math.max(0, run.epoch - 1)), td(shown || dash, "mono"),
        tdn(x.ettr === null ? dash : `${(100 * x.ettr).toFixed(0)}%`), tdn(ago(run.created_at)),
      ].map(esc).join(""));
    });
    const first = list.items.length ? offset + 1 : 0;
    const prev = offset > 0 ? h`<a id="prev-page" href="${runsHash(status, Math.max(0, offset - PAGE_SIZE))}">← newer</a>` : "";
    const next = list.next_offset !== null ? h`<a id="next-page" href="${runsHash(status, list.next_offset)}">older →</a>` : "";
    page.innerHTML = esc(h`
      <h1>Runs</h1>
      <div class="toolbar"><label>Status ${select}</label>
        <span class="muted">${first}–${offset + list.items.length} of ${list.total}, newest first</span>${prev}${next}</div>
      <section class="card" id="runs">${table(["run", "kind", "status", "progress", "holder", "#epoch",
        "#hand-offs", "latest", "#ETTR", "#age"], rows, "no runs")}</section>`);
    document.getElementById("status-filter").addEventListener("change", (ev) => {
      location.hash = runsHash(ev.target.value, 0);
    });
  };
}

// -- the run page ----------------------------------------------------------------------------------

let charts = new Map();      // metric name -> {plot, key}: redrawn only when its data changed
let chartsRun = null;
let actionMessage = null;    // what the last button press answered, for the run it was pressed on

async function metricSeries(runId) {
  // Every series, each step once (a hand-off's superseded points hidden), downsampled on the server.
  const data = await api(runPath(runId, `/metrics?max_points=${MAX_POINTS}`));
  const series = {};
  for (const p of data.items) (series[p.name] = series[p.name] || []).push(p);   // ordered by name, then step
  return series;
}

async function runPage(r) {
  const id = r.id;
  const [run, checkpoints, evals, ledger, series, pool, events] = await Promise.all([
    api(runPath(id, "?redact=true")),
    api(runPath(id, "/checkpoints")),
    api(runPath(id, "/evaluations")),
    optional(runPath(id, "/ledger")),
    metricSeries(id),
    optional(runPath(id, "/rollout/pool")),
    runEvents(id),
  ]);
  const logs = await runLogs(id, run, r.params.get("attempt"));
  return () => drawRun(run, {checkpoints, evals, ledger, series, pool, events, logs});
}

const LOG_KEEP_CHARS = 200000;   // the tail of an attempt's log the page keeps and shows
const PAGES_PER_REFRESH = 20;     // pages of 1000 (log chunks, events) read per refresh, at most
let followed = null;              // {run, epoch, next, text, dropped}: the log being followed

const EVENTS_SHOWN = 50;
let events = null;                // {run, after, items}: a run's newest events, read forward

async function runEvents(id) {
  let e = events && events.run === id ? events : {run: id, after: 0, items: []};
  for (let page = 0; page < PAGES_PER_REFRESH; page++) {
    const data = await api(runPath(id, `/events?after=${e.after}&limit=1000`));
    const items = [...e.items, ...data.items].slice(-EVENTS_SHOWN);
    e = {...e, items, after: data.items.length ? data.items[data.items.length - 1].id : e.after};
    if (data.next_after === null) break;
  }
  events = e;
  return e;
}

async function runLogs(id, run, attempt) {
  const epoch = Number(attempt || (run.attempts.length ? run.attempts[run.attempts.length - 1].epoch : 0));
  if (!epoch) return null;
  let f = followed && followed.run === id && followed.epoch === epoch ? followed : {run: id, epoch, next: 0, text: "", dropped: 0};
  for (let page = 0; page < PAGES_PER_REFRESH; page++) {
    const data = await optional(runPath(id, `/logs?attempt=${epoch}&after=${f.next}&limit=1000`));
    if (!data) return null;   // a commander without central logs
    f = {...f, next: data.next, dropped: data.dropped,
         text: (f.text + data.items.map((c) => c.text).join("")).slice(-LOG_KEEP_CHARS)};
    if (data.items.length < 1000) break;
  }
  followed = f;
  return f;
}

function drawRun(run, d) {
  if (chartsRun !== run.run_id) {
    for (const c of charts.values()) c.plot.destroy();
    charts = new Map();
    chartsRun = run.run_id;
  }
  const scroll = window.scrollY;
  const handoffs = run.attempts.slice(1).map((a) => a.step_start);
  const lost = run.attempts.reduce((s, a) => s + (a.steps_lost || 0), 0);
  const cancel = run.finished_at === null && !run.cancel_requested
    ? h`<button id="cancel" class="danger" type="button">Cancel run</button>` : "";
  const message = actionMessage && actionMessage.run === run.run_id
    ? h`<div id="action-message" class="message ${actionMessage.ok ? "ok" : "error"}">${actionMessage.text}</div>` : "";
  page.innerHTML = esc(h`
    <h1>${run.run_id} ${runBadge(run)}</h1>
    <section class="card facts">
      ${fact("kind", run.kind)} ${fact("progress", progress(run.step, run.max_steps))}
      ${fact("holder", run.holder || dash)} ${fact("epoch", run.epoch)}
      ${fact("hand-offs", Math.max(0, run.attempts.length - 1))} ${fact("steps lost", lost)}
      ${fact("retries", `${run.retries_used} / ${run.max_retries}`)} ${fact("created", stamp(run.created_at))}
      ${fact("finished", stamp(run.finished_at))} ${run.last_error ? fact("last error", run.last_error) : ""}
      ${run.unschedulable ? fact("unschedulable", run.unschedulable) : ""}
      <div>${cancel}</div>
    </section>
    ${message}
    <h2>Attempts</h2>
    <section class="card timeline" id="timeline">${timeline(run)}${attemptsTable(run)}</section>
    <h2>Curves</h2>
    <div class="grid" id="charts">${Object.keys(d.series).sort().map((name) =>
      h`<div class="chart" data-metric="${name}"><h3>${name}</h3><div class="plot"></div></div>`)}</div>
    ${Object.keys(d.series).length ? "" : h`<p class="muted">no metrics reported yet</p>`}
    <h2>Durable checkpoints</h2>
    <section class="card" id="checkpoints">${table(["#step", "#epoch", "uri", "sha256", "committed"],
      d.checkpoints.items.map((c) => raw(esc([tdn(c.step), tdn(c.epoch), td(c.uri, "mono"),
        td(c.manifest_sha256, "mono"), td(stamp(c.created_at))]))))}</section>
    <h2>Evaluations</h2>
    <section class="card" id="evaluations">${evaluations(d.evals)}</section>
    <h2>Ledger</h2>
    <section class="card" id="ledger">${ledgerView(d.ledger)}</section>
    ${d.pool ? h`<h2>Rollout pool</h2><section class="card" id="rollout">${poolView(d.pool)}</section>` : ""}
    <h2>Logs</h2>
    <section class="card" id="logs">${logsView(run, d.logs)}</section>
    <h2>Events</h2>
    <section class="card" id="events">${table(["time", "kind", "message"], d.events.items.slice().reverse()
      .map((e) => raw(esc([td(clock(e.ts)), td(e.kind), td(e.message)]))))}</section>
    <h2>Config <span class="muted">(secrets redacted)</span></h2>
    <section class="card"><pre id="config">${JSON.stringify(run.config, null, 2)}</pre></section>`);
  drawCharts(d.series, handoffs);
  drawEvalCharts(d.evals);
  const button = document.getElementById("cancel");
  if (button) button.addEventListener("click", () => cancelRun(run.run_id));
  const pick = document.getElementById("log-attempt");
  if (pick) pick.addEventListener("change", (ev) => { location.hash = `#/runs/${enc(run.run_id)}?attempt=${ev.target.value}`; });
  const log = document.getElementById("log-text");
  if (log) log.scrollTop = log.scrollHeight;
  window.scrollTo(0, scroll);
}

const fact = (label, value) => h`<div><b>${label}</b>${value}</div>`;

async function cancelRun(runId) {
  try {
    await api(runPath(runId, "/cancel"), {method: "POST"});
    actionMessage = {run: runId, ok: true, text: "Cancel asked: the holder stops the trainer."};
  } catch (err) {
    const why = err instanceof ApiError && err.status === 403
      ? `Not allowed: this token cannot cancel runs (${err.message}).` : `Cancel failed: ${err.message}`;
    actionMessage = {run: runId, ok: false, text: why};
  }
  refresh();
}

const OUTCOME_COLOURS = {succeeded: "#2e8540", lost: "#c62828", failed: "#c62828", preempted: "#b26a00",
                         cancelled: "#b26a00"};

function timeline(run) {
  const tries = run.attempts;
  if (!tries.length) return h`<p class="muted">not granted yet</p>`;
  const now = Date.now() / 1000;
  const lanes = [...new Set(tries.map((a) => a.worker_id))];
  const t0 = tries[0].granted_at;
  const t1 = Math.max(...tries.map((a) => a.ended_at || now), t0 + 1);
  const W = 1000, left = 150, laneH = 30, top = 22, height = top + lanes.length * laneH + 8;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 10);
  const parts = lanes.map((w, i) => h`<g class="lane" data-worker="${w}">
    <text class="lane-label" x="4" y="${top + i * laneH + 19}">${w}</text>
    <line x1="${left}" x2="${W - 10}" y1="${top + i * laneH + laneH / 2}" y2="${top + i * laneH + laneH / 2}" stroke="#eceff3"/></g>`);
  tries.forEach((a, k) => {
    const lane = lanes.indexOf(a.worker_id);
    const xa = x(a.granted_at), xb = Math.max(x(a.ended_at || now), xa + 3);
    const colour = OUTCOME_COLOURS[a.outcome] || "#1f6feb";
    const label = `epoch ${a.epoch} · ${a.outcome || "running"} · steps ${a.step_start}→${a.step_end ?? "…"}`;
    parts.push(h`<g class="attempt" data-epoch="${a.epoch}" data-outcome="${a.outcome || "running"}">
      <title>${label}${a.steps_lost ? ` · ${a.steps_lost} steps lost` : ""}</title>
      <rect x="${xa}" y="${top + lane * laneH + 4}" width="${xb - xa}" height="${laneH - 8}" rx="3" fill="${colour}"/>
      <text class="attempt-label" x="${xa + 4}" y="${top + lane * laneH + 19}">${xb - xa > 120 ? label : `e${a.epoch}`}</text></g>`);
    if (k > 0) {
      const prev = tries[k - 1];
      const xh = x(a.granted_at);
      parts.push(h`<g class="handoff-marker" data-epoch="${a.epoch}">
        <line class="handoff" x1="${xh}" x2="${xh}" y1="12" y2="${height - 4}"/>
        <text class="handoff-label" x="${xh + 3}" y="12">hand-off → e${a.epoch} at step ${a.step_start}${
          prev.steps_lost ? `, ${prev.steps_lost} steps lost` : ""}</text></g>`);
    }
  });
  return h`<svg viewBox="0 0 ${W} ${height}" preserveAspectRatio="none" style="height:${height}px">${parts}</svg>`;
}

function attemptsTable(run) {
  return table(["#epoch", "worker", "granted", "ended", "outcome", "#steps", "#lost", "failure", "note"],
    run.attempts.map((a) => raw(esc([tdn(a.epoch), td(a.worker_id), td(stamp(a.granted_at)), td(stamp(a.ended_at)),
      td(badge(a.outcome || "running")), tdn(`${a.step_start} → ${a.step_end ?? "…"}`), tdn(a.steps_lost ?? dash),
      td([a.failure_class, a.message].filter(Boolean).join(": ") || dash), td(a.resume_note || dash)]))));
}

function evaluations(evals) {
  if (!evals.length) return h`<p class="muted">no evaluations</p>`;
  const rows = [];
  for (const e of evals) {
    for (const [step, scores] of Object.entries(e.scores)) {
      rows.push(raw(esc([td(e.run_id), td(badge(e.status)), td(e.dataset), tdn(step),
        td(Object.entries(scores).map(([k, v]) => `${k} ${num(v)}`).join(", "), "mono")])));
    }
    if (!Object.keys(e.scores).length) rows.push(raw(esc([td(e.run_id), td(badge(e.status)), td(e.dataset), tdn(dash), td(dash)])));
  }
  return h`${table(["eval run", "status", "dataset", "#step", "scores"], rows)}<div class="grid" id="eval-charts"></div>`;
}

function ledgerView(ledger) {
  if (!ledger) return h`<p class="muted">no ledger</p>`;
  const t = ledger.total;
  const totals = h`<div class="facts">
    ${fact("GPU-hours", num(t.gpu_hours))} ${fact("cost", `$${num(t.dollars, 2)}`)}
    ${fact("ETTR", t.ettr === null ? dash : `${(100 * t.ettr).toFixed(1)}%`)} ${fact("wall", duration(t.wall_s))}
    ${fact("useful", duration(t.useful_s))} ${fact("steps gained", t.steps_gained)} ${fact("steps lost", t.steps_lost)}
    ${fact("failover", t.failover_s.length ? t.failover_s.map(duration).join(", ") : dash)}</div>`;
  return h`${totals}${table(["#epoch", "worker", "provider", "outcome", "#wall", "#gained", "#lost", "#s/step",
    "#GPU-h", "#$", "#failover"], ledger.attempts.map((a) => raw(esc([tdn(a.epoch), td(a.worker_id), td(a.provider),
    td(a.outcome || "running"), tdn(duration(a.wall_s)), tdn(a.steps_gained), tdn(a.steps_lost),
    tdn(num(a.seconds_per_step)), tdn(num(a.gpu_hours)), tdn(num(a.dollars, 2)), tdn(duration(a.failover_s))]))))}`;
}

function poolView(pool) {
  return h`<p class="muted">epoch ${pool.epoch} · manager ${pool.url} · weights v${pool.version ?? dash} ·
    reported ${ago(pool.updated_at)} ago</p>${table(["rollout worker", "#version", "#in flight", "#tokens/s",
    "#groups done", "#last seen"], pool.pool.map((w) => raw(esc([td(w.worker_id), tdn(w.version ?? dash),
    tdn(w.groups_in_flight), tdn(num(w.tokens_per_s, 1)), tdn(w.groups_done), tdn(`${num(w.last_seen_s, 1)}s`)]))),
    "no rollout worker attached")}`;
}

function logsView(run, logs) {
  const withTail = run.attempts.filter((a) => a.stderr_tail);
  const tail = withTail.length ? withTail[withTail.length - 1] : null;
  const tailView = tail ? h`<p class="muted">stderr tail of epoch ${tail.epoch}</p><pre id="stderr-tail">${tail.stderr_tail}</pre>`
    : h`<p class="muted">no stderr tail reported</p>`;
  if (!logs) return h`${tailView}<p class="muted">central logs: none for this run</p>`;
  const pick = h`<label>Attempt <select id="log-attempt">${run.attempts.map((a) =>
    h`<option value="${a.epoch}" ${a.epoch === logs.epoch ? raw("selected") : ""}>epoch ${a.epoch} (${a.worker_id})</option>`)}</select></label>`;
  const cut = logs.text.length >= LOG_KEEP_CHARS ? " (its last 200,000 characters)" : "";
  return h`${tailView}${pick} <span class="muted">the trainer's stdout and stderr${cut}${
    logs.dropped ? `; ${logs.dropped} bytes dropped, oldest first` : ""}</span>
    <pre id="log-text">${logs.text || "(empty)"}</pre>`;
}

// -- charts (uPlot) ------------------------------------------------------------------------------

function handoffPlugin(steps) {
  return {hooks: {draw: [(u) => {
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#c62828";
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    for (const step of steps) {
      const px = u.valToPos(step, "x", true);
      if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(px, u.bbox.top);
      ctx.lineTo(px, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }]}};
}

function plot(el, name, xs, ys, marks, colour = "#1f6feb") {
  const width = Math.max(300, el.clientWidth - 8);
  return new uPlot({
    width, height: 220, legend: {show: true}, cursor: {drag: {x: true, y: false}},
    scales: {x: {time: false}},
    axes: [{label: "step"}, {size: 64, values: (u, ticks) => ticks.map(tick)}],
    series: [{label: "step"}, {label: name, stroke: colour, width: 1.5, points: {show: xs.length < 60}}],
    plugins: [handoffPlugin(marks)],
  }, [xs, ys], el);
}

function drawCharts(series, handoffs) {
  for (const name of Object.keys(series)) {
    const box = document.querySelector(`.chart[data-metric="${CSS.escape(name)}"]`);
    const points = series[name];
    const xs = points.map((p) => p.step), ys = points.map((p) => p.value);
    box.dataset.points = String(points.length);
    const key = `${points.length}:${xs[xs.length - 1]}:${ys[ys.length - 1]}:${handoffs.join(",")}`;
    const old = charts.get(name);
    if (old && old.key === key) {
      box.querySelector(".plot").replaceWith(old.el);   // the same chart, moved into the new page
      continue;
    }
    if (old) old.plot.destroy();
    const el = box.querySelector(".plot");
    charts.set(name, {plot: plot(el, name, xs, ys, handoffs), key, el});
  }
}

function drawEvalCharts(evals) {
  const host = document.getElementById("eval-charts");
  if (!host) return;
  const byMetric = {};
  for (const e of evals) {
    for (const [step, scores] of Object.entries(e.scores)) {
      for (const [k, v] of Object.entries(scores)) (byMetric[k] = byMetric[k] || []).push([Number(step), v]);
    }
  }
  for (const [metric, pts] of Object.entries(byMetric)) {
    if (pts.length < 1) continue;
    pts.sort((a, b) => a[0] - b[0]);
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.eval = metric;
    box.innerHTML = esc(h`<h3>eval: ${metric}</h3><div class="plot"></div>`);
    host.appendChild(box);
    plot(box.querySelector(".plot"), metric, pts.map((p) => p[0]), pts.map((p) => p[1]), [], "#2e8540");
  }
}

// -- the workers and hosts page -------------------------------------------------------------------

async function workersPage() {
  const [workers, hosts, rollout] = await Promise.all([
    api("api/v1/workers"), api("api/v1/hosts"), api("api/v1/rollout/workers"),
  ]);
  return () => {
    const state = (w) => !w.alive ? badge("dead")  // a degraded worker claims nothing until its fault is gone
      : w.condition === "degraded" ? h`${badge("degraded")} ${w.condition_reason || ""}` : badge("alive");
    const wrows = workers.map((w) => raw(esc([td(w.worker_id), td(state(w)), td(w.provider),
      td(w.hostname || dash), td(Object.entries(w.resources.labels).map(([k, v]) => `${k}=${v}`).join(", ") || dash, "mono"),
      td(w.resources.gpus.length ? w.resources.gpus.map((g) => g.name).join(", ") : "none"),
      td(w.current_run ? h`<a href="#/runs/${enc(w.current_run)}">${w.current_run}</a>` : dash),
      tdn(`${ago(w.last_heartbeat)} ago`)])));
    const hrows = hosts.map((x) => raw(esc([td(x.name), td(`${x.user}@${x.address}:${x.port}`, "mono"),
      td(x.enabled ? "enabled" : "disabled"),
      td(x.reachable === null ? "not polled yet" : x.reachable ? "reachable" : h`unreachable: ${x.last_error || ""}`),
      tdn(x.polled_at ? `${ago(x.polled_at)} ago` : dash),
      td(x.gpus.map((g) => `#${g.index} ${g.name} ${g.utilization_pct ?? "?"}% ${g.memory_used_mb}/${g.memory_total_mb} MB`)
        .join("; ") || "none", "mono"),
      td(x.free_gpus.join(", ") || "none"), td(x.workers.map((w) => `${w.worker_id} (${w.role})`).join(", ") || dash)])));
    const rrows = rollout.map((w) => raw(esc([td(w.worker_id), td(w.run_id || dash), tdn(`${ago(w.last_seen)} ago`)])));
    page.innerHTML = esc(h`
      <h1>Workers</h1>
      <section class="card" id="workers">${table(["worker", "state", "provider", "host", "labels", "GPUs", "current run",
        "#last heartbeat"], wrows, "no workers")}</section>
      <h2>SSH hosts</h2>
      <section class="card" id="hosts">${table(["host", "address", "autoscale", "poller", "#polled", "GPU use",
        "free GPUs", "workers started"], hrows, "no SSH hosts (relay hosts add)")}</section>
      <h2>Rollout workers</h2>
      <section class="card" id="rollout-workers">${table(["rollout worker", "run", "#last seen"], rrows,
        "no rollout workers")}</section>`);
  };
}

const PAGES = {runs: runsPage, run: runPage, workers: workersPage};

takeTokenFromHash();
window.addEventListener("hashchange", () => { actionMessage = null; refresh(); });
refresh();
