// fenliu dashboard page: live from the dashboard's server-sent events, no polling.
// Written for fenliu; no third-party code. Times are shown in the shop's time zone.
"use strict";

const SHOP = decodeURIComponent(location.pathname.split("/")[2] || "");
const $ = (sel) => document.querySelector(sel);
const LOG_MAX = 300;

let state = null; // the last "state" message
let receivedAt = 0; // performance.now() when it came: waits tick from there
let lastSeq = 0; // the last event seq shown: a resumed stream never shows one twice
let fenliuUp = false; // the last "link" message: events flow from fenliu
let zone = "Asia/Shanghai";
let fmtClock = null;
let fmtTime = null;
let noticeTimer = 0;
window.fenliu = { seqs: [] }; // the seqs the log showed, in order (tests read it)

// ---------------------------------------------------------------- formatting

function setZone(tz) {
  if (tz === zone && fmtTime) return;
  zone = tz;
  try {
    fmtClock = new Intl.DateTimeFormat("en-GB", { timeZone: tz, weekday: "short", hour: "2-digit",
      minute: "2-digit", second: "2-digit", hour12: false });
    fmtTime = new Intl.DateTimeFormat("en-GB", { timeZone: tz, hour: "2-digit", minute: "2-digit",
      second: "2-digit", hour12: false });
  } catch (e) { // an unknown zone: UTC, and say so
    zone = "UTC";
    return setZone("UTC");
  }
  $("#zone").textContent = zone;
}

function at(ms) { return fmtTime ? fmtTime.format(new Date(ms)) : ""; }

function dur(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  const h = Math.floor(m / 60);
  return h + "h " + String(m % 60).padStart(2, "0") + "m";
}

function pct(x) { return (x * 100).toFixed(x >= 0.995 || x === 0 ? 0 : 1) + "%"; }

// The shop's "now" as fenliu's clock said at the last state, moved on by the local clock.
function now() { return state ? state.at + (performance.now() - receivedAt) : Date.now(); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ---------------------------------------------------------------- the stream

function connect() {
  const source = new EventSource(`/shops/${encodeURIComponent(SHOP)}/events`);
  source.addEventListener("open", () => link("connecting", "dashboard connected"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The stream was refused (not a dropped connection, which EventSource retries):
      // say why; when fenliu was only unreachable, try again in a while.
      link("down", "the dashboard refused this shop");
      fetch(`/api/shops/${encodeURIComponent(SHOP)}`).then((r) => r.json())
        .then((body) => {
          if (!body.error) return connect(); // it works now
          const passing = ["UNAVAILABLE", "DEADLINE_EXCEEDED"].includes(body.error.code);
          showError("Watching the shop", body.error);
          if (passing) {
            link("down", "fenliu unreachable, retrying…");
            setTimeout(connect, 3000);
          }
        })
        .catch(() => setTimeout(connect, 3000));
    } else {
      link("down", "dashboard unreachable, reconnecting…");
    }
  });
  source.addEventListener("hello", (m) => { lastSeq = Math.max(lastSeq, JSON.parse(m.data).seq); });
  source.addEventListener("events", (m) => { for (const e of JSON.parse(m.data)) onEvent(e); });
  source.addEventListener("behind", (m) => {
    const b = JSON.parse(m.data);
    note(`fell behind (${b.cause}): events up to #${b.seq} were not delivered; state re-read`);
    lastSeq = Math.max(lastSeq, b.seq);
  });
  source.addEventListener("reset", (m) => {
    const r = JSON.parse(m.data);
    if (r.seq > lastSeq) note(`events #${lastSeq + 1}–#${r.seq} are no longer kept; state re-read`);
    lastSeq = Math.max(lastSeq, r.seq);
  });
  source.addEventListener("link", (m) => {
    const l = JSON.parse(m.data);
    fenliuUp = l.up;
    if (l.up) link("live", "live");
    else link("down", "fenliu unreachable" + (l.error ? ": " + l.error.message : "") + ", retrying…");
  });
  source.addEventListener("state", (m) => {
    state = JSON.parse(m.data);
    receivedAt = performance.now();
    if (fenliuUp) link("live", "live"); // a re-read alone is not live: events must flow
    render();
  });
}

function link(kind, text) {
  const pill = $("#link");
  pill.dataset.state = kind;
  pill.textContent = text;
}

const KIND_TEXT = {
  assigned: "assigned", reassigned_away: "reassigned", transferred: "transferred",
  backlog_changed: "backlog", queue_changed: "queue", status_changed: "status",
  timeout: "timeout", ended: "ended", left_message: "left message",
};

function onEvent(e) {
  if (e.seq <= lastSeq) return; // already shown (a resumed stream overlaps)
  lastSeq = e.seq;
  window.fenliu.seqs.push(e.seq);
  const who = [e.buyer && `buyer ${e.buyer}`, e.agent && `→ ${e.agent}`,
    e.status && e.status, e.session && `(${e.session})`].filter(Boolean).join(" ");
  const reason = e.reason && e.reason !== "unspecified" ? " · " + e.reason : "";
  const item = el("li", { dataset: { seq: e.seq, kind: e.kind } },
    el("span", { class: "t" }, at(e.at)),
    el("span", { class: "kind" }, KIND_TEXT[e.kind] || String(e.kind)),
    who + reason);
  addLog(item);
}

function note(text) { addLog(el("li", { class: "note" }, el("span", { class: "t" }, at(now())), text)); }

function addLog(item) {
  const log = $("#log");
  log.prepend(item);
  while (log.children.length > LOG_MAX) log.lastChild.remove();
}

// ---------------------------------------------------------------- rendering

function render() {
  setZone(state.time_zone);
  $("#shop").textContent = state.shop;
  document.title = `fenliu · ${state.shop}`;
  renderTiles();
  renderBanner();
  renderTeam();
  renderQueues();
  renderCharts();
  tick();
}

function countsTable(caption, c) {
  const head = ["assigned", "reassigned", "transferred", "timeouts", "2-min reply"];
  const t = el("table", {}, el("caption", {}, caption),
    el("tr", {}, ...head.map((h) => el("th", {}, h))),
    el("tr", {}, el("td", {}, String(c.assigned)), el("td", {}, String(c.reassigned)),
      el("td", {}, String(c.transferred)), el("td", {}, String(c.timeouts)),
      el("td", { class: "rate", title: `${c.fast_first_replies} fast of ${c.first_replies + c.unreplied}` },
        c.first_replies + c.unreplied ? pct(c.fast_reply_rate) : "–")));
  return t;
}

function renderTiles() {
  const s = state.stats;
  $("#t-queue").textContent = s.queue_length;
  $("#t-left").textContent = s.left_messages;
  $("#t-open").textContent = s.open_sessions;
  $("#t-today").replaceChildren(countsTable("Today", s.today));
  $("#t-hour").replaceChildren(countsTable(`Last ${s.window_minutes} min`, s.window));
}

function renderBanner() {
  const banner = $("#banner");
  const resting = state.team.filter((a) => a.status === "suspended");
  const waiting = state.stats.queue_length;
  if (!waiting || !resting.length) { banner.hidden = true; return; }
  banner.hidden = false;
  const names = resting.map((a) => a.agent).join(", ");
  banner.replaceChildren(
    `${waiting} buyer${waiting > 1 ? "s" : ""} waiting (longest `,
    el("span", { class: "tick-wait", dataset: { base: state.stats.longest_wait_ms } }, ""),
    `) while ${resting.length} agent${resting.length > 1 ? "s are" : " is"} on a break: ${names}. `,
    ...resting.slice(0, 6).map((a) => el("button", { type: "button", dataset: { agent: a.agent },
      onclick: () => act("status", { agent: a.agent, status: "online" }, `${a.agent} back online`) },
      `${a.agent} → online`)));
}

// Rows keyed by id: updated in place, so a control a supervisor is using is not rebuilt.
function syncRows(tbody, items, key, build, update, empty) {
  const old = new Map([...tbody.children].filter((r) => r.dataset.key).map((r) => [r.dataset.key, r]));
  const rows = items.map((item) => {
    let row = old.get(key(item));
    old.delete(key(item));
    if (!row) { row = build(item); row.dataset.key = key(item); }
    update(row, item);
    return row;
  });
  for (const row of old.values()) row.remove();
  const blank = tbody.querySelector("tr.empty");
  if (blank) blank.remove();
  rows.forEach((row, i) => { if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null); });
  if (!items.length) tbody.append(el("tr", { class: "empty" }, el("td", { colspan: 10 }, empty)));
}

function cell(row, name, text) {
  const c = row.querySelector(`[data-c=${name}]`);
  if (c.textContent !== String(text)) c.textContent = text;
  return c;
}

function renderTeam() {
  const team = [...state.team].sort((a, b) =>
    rank(a.status) - rank(b.status) || a.agent.localeCompare(b.agent));
  $("#team-count").textContent = `${team.filter((a) => a.status !== "offline").length} of ${team.length} signed in`;
  syncRows($("#team tbody"), team, (a) => a.agent, buildAgent, updateAgent, "no agents");
  const picker = $("#pick-agent");
  const chosen = picker.value;
  const names = team.filter((a) => a.status !== "offline").map((a) => a.agent);
  const all = team.map((a) => a.agent);
  const wanted = [...names, ...all.filter((n) => !names.includes(n))];
  if ([...picker.options].map((o) => o.value).join("\n") !== wanted.join("\n")) {
    picker.replaceChildren(...wanted.map((n) => el("option", { value: n }, n)));
    if (wanted.includes(chosen)) picker.value = chosen;
  }
}

function rank(status) { return { online: 0, suspended: 1, invisible: 2, offline: 3 }[status] ?? 4; }

function buildAgent(a) {
  const statusSel = el("select", { "data-c": "set-status", "aria-label": `set status of ${a.agent}`,
    onchange: (ev) => {
      const value = ev.target.value;
      ev.target.value = "";
      if (value) act("status", { agent: a.agent, status: value }, `${a.agent} is now ${value}`);
    } }, el("option", { value: "" }, "set…"),
    ...["online", "invisible", "suspended", "offline"].map((s) => el("option", { value: s }, s)));
  const maxIn = el("input", { class: "max", type: "number", min: "0", max: "10000",
    "data-c": "max-input", "aria-label": `max reception of ${a.agent}` });
  const setMax = () => act("max", { agent: a.agent, max: Number(maxIn.value) },
    `${a.agent} now takes up to ${maxIn.value}`);
  maxIn.addEventListener("keydown", (ev) => { if (ev.key === "Enter") setMax(); });
  return el("tr", { dataset: { agent: a.agent } },
    el("td", { "data-c": "agent" }), el("td", {}, el("span", { "data-c": "status", class: "status" })),
    el("td", { "data-c": "since" }), el("td", { "data-c": "load" }), el("td", { class: "num", "data-c": "new" }),
    el("td", { class: "num", "data-c": "backlog" }), el("td", { class: "num", "data-c": "served" }),
    el("td", {}, statusSel),
    el("td", {}, maxIn, el("button", { type: "button", "data-c": "set-max", onclick: setMax }, "set")),
    el("td", {}, el("button", { type: "button", "data-c": "sessions", onclick: () => openSessions(a.agent) }, "sessions")));
}

function updateAgent(row, a) {
  const role = a.role === "main" ? " (main)" : "";
  const groups = a.groups.length ? " · " + a.groups.join(", ") : "";
  cell(row, "agent", a.agent + role + groups);
  const pill = cell(row, "status", a.status);
  pill.className = "status " + a.status;
  const since = row.querySelector("[data-c=since]");
  since.dataset.since = a.since;
  since.dataset.known = a.since_known ? "1" : "";
  since.title = (a.since_known ? "since " : "at least since ") + at(a.since);
  const load = row.querySelector("[data-c=load]");
  const width = a.max ? Math.min(100, (100 * a.load) / a.max) : a.load ? 100 : 0;
  load.replaceChildren(el("span", { class: "bar" }, el("i", { class: a.load >= a.max ? "full" : "",
    style: `width:${width}%` })), `${a.load} / ${a.max}`);
  cell(row, "new", a.new);
  cell(row, "backlog", a.backlog);
  cell(row, "served", a.served_today);
  const maxIn = row.querySelector("[data-c=max-input]");
  if (document.activeElement !== maxIn && maxIn.dataset.shown !== String(a.max)) {
    maxIn.value = a.max;
    maxIn.dataset.shown = a.max;
  }
}

function filtered(entries) {
  const p = $("#f-priority").value, g = $("#f-group").value, c = $("#f-channel").value;
  const sort = $("#f-sort").value;
  const list = entries.filter((e) => (p === "" || e.priority === (p === "yes")) &&
    (g === "" || e.group === g) && (c === "" || e.channel === c));
  if (sort === "wait") list.sort((a, b) => b.waited_ms - a.waited_ms);
  else if (sort === "arrival") list.sort((a, b) => a.waited_ms - b.waited_ms);
  return list;
}

function options(select, values) {
  const chosen = select.value;
  const wanted = ["", ...[...new Set(values)].filter((v) => v !== "").sort()];
  if (chosen && !wanted.includes(chosen)) wanted.push(chosen);
  if ([...select.options].map((o) => o.value).join("\n") === wanted.join("\n")) return;
  select.replaceChildren(...wanted.map((v) => el("option", { value: v }, v === "" ? "all" : v)));
  select.value = chosen;
}

function renderQueues() {
  const q = state.queue, l = state.left;
  const everything = [...q.entries, ...l.entries];
  options($("#f-group"), everything.map((e) => e.group));
  options($("#f-channel"), everything.map((e) => e.channel));
  const shown = filtered(q.entries), shownLeft = filtered(l.entries);
  $("#queue-count").textContent = countText(shown.length, q);
  $("#left-count").textContent = countText(shownLeft.length, l);
  syncRows($("#queue tbody"), shown, (e) => e.session, (e) => buildEntry(e, "queue"), updateEntry,
    q.total ? "nothing matches the filters" : "nobody is waiting");
  syncRows($("#left tbody"), shownLeft, (e) => e.session, (e) => buildEntry(e, "left"), updateEntry,
    l.total ? "nothing matches the filters" : "no left messages");
}

function countText(shown, list) {
  const more = list.total > list.entries.length ? ` (first ${list.entries.length} of ${list.total})` : "";
  return shown === list.entries.length ? `${list.total}${more}` : `${shown} shown of ${list.total}${more}`;
}

function buildEntry(e, kind) {
  const pick = () => {
    const agent = $("#pick-agent").value;
    if (!agent) return showError("Pick", { code: "", reason: "", field: "agent", message: "choose an agent first" });
    act("pick", { agent, session: e.session }, `${agent} picked buyer ${e.buyer}`);
  };
  const end = () => act("end", { sessions: [e.session] }, `ended ${e.session}`);
  return el("tr", { dataset: { session: e.session, buyer: e.buyer, kind } },
    el("td", { class: "num", "data-c": "pos" }), el("td", { "data-c": "buyer" }),
    el("td", { "data-c": "wait", class: "tick-wait" }), el("td", { "data-c": "arrived" }),
    el("td", { "data-c": "priority" }), el("td", { "data-c": "group" }), el("td", { "data-c": "channel" }),
    el("td", {}, el("button", { type: "button", "data-c": "pick", onclick: pick }, "pick"), " ",
      el("button", { type: "button", "data-c": "end", onclick: end }, "end")));
}

function updateEntry(row, e) {
  cell(row, "pos", e.position || "");
  cell(row, "buyer", e.buyer + (e.agent ? ` → ${e.agent}` : ""));
  row.querySelector("[data-c=wait]").dataset.base = e.waited_ms;
  row.dataset.waited = e.waited_ms;
  cell(row, "arrived", at(state.at - e.waited_ms));
  const p = cell(row, "priority", e.priority ? "priority" : "");
  p.className = e.priority ? "prio" : "";
  cell(row, "group", e.group || "–");
  cell(row, "channel", e.channel || "–");
}

// Once a second: the clock, waits and times in status move on without a message.
function tick() {
  if (!state) return;
  const moved = performance.now() - receivedAt;
  $("#clock").textContent = fmtClock ? fmtClock.format(new Date(now())) : "";
  for (const c of document.querySelectorAll(".tick-wait")) {
    const ms = Number(c.dataset.base || 0) + moved;
    c.textContent = dur(ms);
    c.classList.toggle("waitlong", ms >= 120000);
  }
  const s = state.stats;
  $("#t-wait").textContent = s.queue_length ? "longest " + dur(s.longest_wait_ms + moved) : "";
  for (const c of document.querySelectorAll("#team [data-c=since]")) {
    c.textContent = (c.dataset.known ? "" : "≥ ") + dur(now() - Number(c.dataset.since));
  }
}

// ---------------------------------------------------------------- charts (hand-written SVG)

const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function lineChart(target, points, { x0, x1, yMax, yLabel, cls, xLabel }) {
  const W = 180, H = 92, L = 30, R = 4, T = 6, B = 14;
  const box = $(target);
  box.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - (y / (yMax || 1)) * (H - T - B);
  const parts = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B })];
  for (const f of [0.5, 1]) {
    parts.push(svg("line", { class: "grid", x1: L, y1: sy(yMax * f), x2: W - R, y2: sy(yMax * f) }));
    parts.push(svg("text", { x: L - 3, y: sy(yMax * f) + 3, "text-anchor": "end" }, yLabel(yMax * f)));
  }
  parts.push(svg("text", { x: L - 3, y: H - B + 3, "text-anchor": "end" }, yLabel(0)));
  parts.push(svg("text", { x: L, y: H - 2 }, xLabel(x0)));
  parts.push(svg("text", { x: W - R, y: H - 2, "text-anchor": "end" }, xLabel(x1)));
  if (points.length) {
    const pts = points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    parts.push(svg("polyline", { class: cls, points: pts, "data-points": points.length }));
    const [lx, ly] = points[points.length - 1];
    parts.push(svg("circle", { class: cls, cx: sx(lx).toFixed(1), cy: sy(ly).toFixed(1), r: 2 }));
  }
  box.replaceChildren(...parts);
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function renderCharts() {
  const h = state.history, t1 = state.at, t0 = t1 - 3600000;
  const clock = (ms) => at(ms).slice(0, 5);
  const qMax = niceMax(Math.max(1, ...h.hour.map((p) => p[1])));
  lineChart("#c-queue", h.hour.map((p) => [p[0], p[1]]),
    { x0: t0, x1: t1, yMax: qMax, yLabel: (v) => String(Math.round(v)), cls: "queue", xLabel: clock });
  const wMax = niceMax(Math.max(60000, ...h.hour.map((p) => p[2])) / 60000) * 60000;
  lineChart("#c-wait", h.hour.map((p) => [p[0], p[2]]),
    { x0: t0, x1: t1, yMax: wMax, yLabel: (v) => (v >= 60000 ? Math.round(v / 60000) + "m" : Math.round(v / 1000) + "s"), cls: "wait", xLabel: clock });
  const day = h.day.filter((p) => p[2] > 0);
  lineChart("#c-rate", day.map((p) => [p[0], p[1]]),
    { x0: h.day_start, x1: h.day_start + 86400000, yMax: 1, yLabel: (v) => Math.round(v * 100) + "%",
      cls: "rate", xLabel: (ms) => (ms > h.day_start ? "24:00" : "00:00") });
  servedChart();
}

function servedChart() {
  const box = $("#c-served");
  const agents = [...state.team].sort((a, b) => b.served_today - a.served_today).slice(0, 8);
  const W = 180, H = 92, L = 58, rowH = Math.min(22, (H - 4) / Math.max(1, agents.length));
  box.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const top = Math.max(1, ...agents.map((a) => a.served_today));
  const parts = [];
  agents.forEach((a, i) => {
    const y = 2 + i * rowH, w = ((W - L - 24) * a.served_today) / top;
    const mid = y + rowH / 2 + 3;
    parts.push(svg("text", { x: L - 3, y: mid, "text-anchor": "end" }, a.agent.slice(0, 12)));
    const bh = Math.min(9, rowH - 2);
    parts.push(svg("rect", { class: "served", x: L, y: y + (rowH - bh) / 2, width: Math.max(0.5, w),
      height: bh, "data-agent": a.agent, "data-served": a.served_today }));
    parts.push(svg("text", { x: L + w + 3, y: mid }, String(a.served_today)));
  });
  box.replaceChildren(...parts);
}

// ---------------------------------------------------------------- actions

async function post(action, body) {
  const r = await fetch(`/api/shops/${encodeURIComponent(SHOP)}/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let reply;
  try { reply = await r.json(); } catch (e) { reply = { error: { code: `HTTP ${r.status}`, message: r.statusText } }; }
  if (!r.ok || reply.error) throw reply.error || { code: `HTTP ${r.status}`, message: "" };
  return reply.result;
}

const ACTION_TEXT = { status: "Set status", max: "Set max reception", pick: "Pick", end: "End sessions" };

async function act(action, body, done) {
  try {
    const result = await post(action, body);
    let text = done;
    if (action === "pick") text += ` (${result.outcome}, ${result.reason})`;
    if (action === "end") text += ` (${result.ended} ended)`;
    showNotice(text, false);
    return result;
  } catch (error) {
    showError(ACTION_TEXT[action] || action, error);
    return null;
  }
}

function showError(what, error) {
  const code = [error.code, error.reason].filter(Boolean).join(" ");
  const field = error.field ? ` (field ${error.field})` : "";
  showNotice(`${what} refused: ${code}${code ? " — " : ""}${error.message}${field}`, true);
}

function showNotice(text, isError) {
  const n = $("#notice");
  n.hidden = false;
  n.textContent = text;
  n.className = isError ? "error" : "ok";
  clearTimeout(noticeTimer);
  if (!isError) noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
}

let sessionsOf = "";
async function openSessions(agent) {
  sessionsOf = agent;
  const panel = $("#sessions");
  panel.hidden = false;
  $("#sessions-agent").textContent = agent;
  const r = await fetch(`/api/shops/${encodeURIComponent(SHOP)}/agents/${encodeURIComponent(agent)}/sessions`);
  const body = await r.json();
  if (body.error) { showError("List sessions", body.error); return; }
  const rows = body.sessions.map((s) => el("tr", { dataset: { session: s.session } },
    el("td", {}, el("input", { type: "checkbox", value: s.session, "aria-label": `select ${s.session}` })),
    el("td", {}, s.session), el("td", {}, s.buyer), el("td", {}, s.state), el("td", {}, s.group || "–"),
    el("td", {}, s.channel || "–"), el("td", {}, at(s.created))));
  panel.querySelector("tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", { class: "empty" }, el("td", { colspan: 7 }, "no open sessions"))]));
}

$("#sessions-close").addEventListener("click", () => { $("#sessions").hidden = true; });
$("#end-selected").addEventListener("click", async () => {
  const chosen = [...document.querySelectorAll("#sessions tbody input:checked")].map((i) => i.value);
  if (!chosen.length) return showError("End sessions", { message: "select sessions first" });
  if (await act("end", { sessions: chosen }, `ended ${chosen.length} of ${sessionsOf}'s sessions`)) {
    openSessions(sessionsOf);
  }
});
for (const id of ["#f-priority", "#f-group", "#f-channel", "#f-sort"]) {
  $(id).addEventListener("change", () => { if (state) { renderQueues(); tick(); } });
}

setZone(zone);
setInterval(tick, 1000);
connect();
