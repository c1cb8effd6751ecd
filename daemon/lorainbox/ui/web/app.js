// The status page: polls the daemon's JSON API every 2 s and draws the queue and a loss chart.
// Names come from folder names a person chose, so text goes in with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "lorainbox-token";
const NO_TOKEN =
  "Refused: this needs the token — open the page with `lorainbox status --web`";
const SVG_NS = "http://www.w3.org/2000/svg";
const ACTIVE = ["training", "exporting", "registering"];
const FINISHED = ["done", "failed", "cancelled"];

let jobs = [];
let selectedId = null;
let pickedByHand = false;

// -- the token: from the URL fragment (never in a request line) into sessionStorage -----------

function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();

// -- talking to the daemon --------------------------------------------------------------------

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function act(action) {
  const job = jobs.find((j) => j.id === selectedId);
  if (!job) return;
  if (!token) {
    say(NO_TOKEN, "refused");
    return;
  }
  const response = await fetch(`/api/jobs/${job.id}/${action}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  if (response.status === 202) {
    say(`Asked the daemon to ${action} ${job.name}.`, "ok");
    poll();
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    say(`Refused: ${body.error || NO_TOKEN}`, "refused");
  } else {
    say(`Could not ${action} ${job.name}: ${body.error || `HTTP ${response.status}`}`, "refused");
  }
}

function say(text, kind) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = kind;
}

// -- the queue --------------------------------------------------------------------------------

function stateText(job) {
  if (job.waiting_for && ["waiting", "paused", "registering"].includes(job.state)) {
    if (job.waiting_for.startsWith(job.state)) return job.waiting_for;
    return `${job.state}: ${job.waiting_for}`;
  }
  if (job.state === "failed" && job.error) return `failed: ${job.error.split("\n")[0]}`;
  if (job.export_stage) return `exporting: ${job.export_stage}`;
  return job.state;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function progressCell(row, p) {
  const td = row.insertCell();
  if (!p.total) return;
  const bar = document.createElement("progress");
  bar.max = p.total;
  bar.value = Math.min(p.step || 0, p.total);
  const label = document.createElement("span");
  label.className = "steps";
  label.textContent = `${p.step || 0}/${p.total}`;
  td.append(bar, " ", label);
}

function renderQueue() {
  const body = document.querySelector("#queue tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const p = job.progress || {};
    const row = body.insertRow();
    row.dataset.id = job.id;
    row.tabIndex = 0;
    row.className = `state-${job.state}` + (job.id === selectedId ? " selected" : "");
    row.addEventListener("click", () => select(job.id));
    row.addEventListener("keydown", (e) => e.key === "Enter" && select(job.id));
    cell(row, job.name, "name");
    cell(row, stateText(job), "state");
    progressCell(row, p);
    cell(row, job.loss || "", "num");
    cell(row, p.tokens_per_second ? p.tokens_per_second.toFixed(0) : "", "num");
    cell(row, job.eta || "", "num");
  }
  document.getElementById("empty").hidden = jobs.length > 0;
}

function pickDefault() {
  const running = jobs.find((j) => ACTIVE.includes(j.state));
  const open = jobs.find((j) => !FINISHED.includes(j.state));
  const last = jobs[jobs.length - 1];
  return (running || open || last || {}).id ?? null;
}

function select(id) {
  selectedId = id;
  pickedByHand = true;
  say("", "");
  poll();
}

// -- the selected job -------------------------------------------------------------------------

async function renderDetail() {
  const section = document.getElementById("detail");
  if (selectedId == null) {
    section.hidden = true;
    return;
  }
  const job = await getJSON(`/api/jobs/${selectedId}`);
  section.hidden = false;
  document.getElementById("detail-title").textContent = job.name;
  const p = job.progress || {};
  const parts = [stateText(job)];
  if (p.total) parts.push(`step ${p.step || 0}/${p.total}`);
  if (job.valid_loss) parts.push(`valid loss ${job.valid_loss}`);
  if (job.model) parts.push(`model ${job.model}`);
  document.getElementById("detail-state").textContent = parts.join(" · ");
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.disabled = !job.actions.includes(button.dataset.action);
  }
  drawChart(document.getElementById("chart"), job.loss.train, job.loss.valid);
}

// -- the loss chart, drawn as SVG -------------------------------------------------------------

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  if (text != null) el.textContent = text;
  return el;
}

function ticks(lo, hi, count, minStep = 0) {
  const raw = Math.max((hi - lo) / count, minStep);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
  return { values: out, step };
}

function label(value, step) {
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  return value.toFixed(Math.min(digits, 4));
}

function drawChart(chart, train, valid) {
  const [W, H] = [640, 260];
  const m = { left: 56, right: 16, top: 12, bottom: 36 };
  chart.replaceChildren();
  const points = train.concat(valid);
  if (points.length === 0) {
    chart.append(svg("text", { x: W / 2, y: H / 2, class: "empty" }, "no loss reported yet"));
    return;
  }
  const steps = points.map((p) => p[0]);
  const losses = points.map((p) => p[1]);
  let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  let [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.05 || 0.5;
  [y0, y1] = [y0 - pad, y1 + pad];
  const x = (s) => m.left + ((s - x0) / (x1 - x0)) * (W - m.left - m.right);
  const y = (v) => H - m.bottom - ((v - y0) / (y1 - y0)) * (H - m.top - m.bottom);

  const yt = ticks(y0, y1, 4);
  for (const v of yt.values) {
    chart.append(svg("line", { x1: m.left, x2: W - m.right, y1: y(v), y2: y(v), class: "grid" }));
    chart.append(svg("text", { x: m.left - 6, y: y(v) + 4, class: "tick y" }, label(v, yt.step)));
  }
  const xt = ticks(x0, x1, 6, 1);
  const base = H - m.bottom;
  for (const s of xt.values) {
    chart.append(svg("text", { x: x(s), y: base + 16, class: "tick x" }, label(s, xt.step)));
  }
  chart.append(svg("line", { x1: m.left, x2: m.left, y1: m.top, y2: base, class: "axis" }));
  chart.append(svg("line", { x1: m.left, x2: W - m.right, y1: base, y2: base, class: "axis" }));
  chart.append(svg("text", { x: (W + m.left) / 2, y: H - 4, class: "title" }, "step"));
  chart.append(svg("text", { x: 14, y: m.top + 10, class: "title" }, "loss"));

  const point = ([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`;
  const line = (series) => series.map((p, i) => (i ? "L" : "M") + point(p)).join(" ");
  if (train.length) chart.append(svg("path", { d: line(train), class: "line train" }));
  if (valid.length) {
    chart.append(svg("path", { d: line(valid), class: "line valid" }));
    for (const [s, v] of valid) {
      chart.append(svg("circle", { cx: x(s), cy: y(v), r: 3, class: "dot valid" }));
    }
  }
}

// -- the loop ---------------------------------------------------------------------------------

let timer = null;
let polling = false;
let pollAgain = false;

async function poll() {
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  clearTimeout(timer);
  const status = document.getElementById("daemon");
  try {
    jobs = (await getJSON("/api/jobs")).jobs;
    if (!pickedByHand || !jobs.some((j) => j.id === selectedId)) {
      selectedId = pickDefault();
      pickedByHand = false;
    }
    renderQueue();
    await renderDetail();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "muted";
  } catch (error) {
    status.textContent = `The daemon is not answering (${error.message}); retrying…`;
    status.className = "refused";
  }
  polling = false;
  if (pollAgain) {
    pollAgain = false;
    poll();
    return;
  }
  timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  poll();
});
