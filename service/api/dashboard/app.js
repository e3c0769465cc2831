// spikeloop dashboard: sessions, live plots from the WebSocket streams, operator controls.
// Every read sends the token typed in the header (kept for this tab in sessionStorage; it
// needs the read scope); every change sends the operator's token, and arming, disarming and
// limits go through a confirmation dialog first.
"use strict";

const RASTER_S = 5, TRAJ_S = 5, SERIES_S = 20, POLL_MS = 2000, DRAW_MS = 100;
const ACTIVE = ["calibrating", "running"];
const $ = (id) => document.getElementById(id);

const S = {
  sessions: [], sid: null, row: null, stream: null, raster: null,
  spikes: { t: [], ch: [] }, channels: 1, rasterEnd: 0, spikesSeen: 0, rasterUpdates: 0,
  decoded: [], stim: { t: [], v: [] }, events: [], armed: null, outputNames: [], pair: [0, 1],
};

// ------------------------------------------------------------------ REST
const TOKEN_KEY = "spikeloop.token";

/** The token for reads: the header's field (the dialog's token is sent for changes). */
function readToken() {
  return $("token").value.trim();
}

async function api(method, path, body, token = readToken()) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    let d = data && data.detail !== undefined ? data.detail : r.statusText;
    if (Array.isArray(d)) d = d.map((e) => `${(e.loc || []).slice(-1)}: ${e.msg}`).join("; ");
    throw new Error(`HTTP ${r.status}: ${d}`);
  }
  return data;
}

function notice(text, error = false) {
  const n = $("notice");
  n.textContent = text;
  n.className = error ? "error" : "";
}

function operatorToken() {
  const t = $("token").value.trim();
  if (!t) notice("enter an operator token first (var/admin.token on the server)", true);
  return t;
}

// ------------------------------------------------------------------ sessions
async function refresh() {
  try {
    S.sessions = await api("GET", "/sessions");
  } catch (e) {
    if (/HTTP 40[13]/.test(e.message)) {
      notice("enter a token with the read scope (var/admin.token on the server, or " +
             "spikeloop token create NAME --scopes read): " + e.message, true);
    } else {
      notice("control plane unreachable: " + e.message, true);
    }
    return;
  }
  if ($("notice").className === "error" && /read scope/.test($("notice").textContent)) {
    notice("");
  }
  const body = $("sessions").tBodies[0];
  body.replaceChildren(...S.sessions.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.sid = s.id;
    if (s.id === S.sid) tr.className = "selected";
    const live = s.live || {};
    const stim = live.armed === undefined ? "-" : live.armed ? "ARMED" : "off";
    for (const v of [s.id, s.name, s.state, live.bins ?? "-", stim, s.worker ?? "this host"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    tr.onclick = () => select(s.id);
    return tr;
  }));
  if (!S.sid && S.sessions.length) select(S.sessions[0].id);
  const row = S.sessions.find((s) => s.id === S.sid);
  if (row) showSession(row);
}

function select(sid) {
  if (S.sid === sid) return;
  closeStreams();
  Object.assign(S, { sid, row: null, spikes: { t: [], ch: [] }, rasterEnd: 0, spikesSeen: 0,
                     rasterUpdates: 0, decoded: [], stim: { t: [], v: [] }, events: [],
                     armed: null, outputNames: [], pair: [0, 1] });
  $("events").replaceChildren();
  $("detail").hidden = false;
  for (const tr of $("sessions").tBodies[0].rows) {
    tr.className = tr.dataset.sid === sid ? "selected" : "";
  }
  const row = S.sessions.find((s) => s.id === sid);
  if (row) showSession(row);
  loadLimits();
}

function showSession(row) {
  S.row = row;
  const live = row.live || {};
  $("title").textContent = `${row.name} · ${row.id}`;
  $("state").textContent = row.state + (row.error ? ` (${row.error})` : "");
  $("state").className = "badge " + row.state;
  if (live.armed !== undefined) S.armed = live.armed;
  showArmed();
  const active = ACTIVE.includes(row.state);
  $("start").disabled = active;
  $("stop").disabled = !active;
  $("arm").disabled = !active || S.armed === true;
  $("disarm").disabled = !active;
  const names = (live.decoder && live.decoder.output_names) || [];
  if (names.join() !== S.outputNames.join()) setOutputNames(names);
  if (active) openStreams(row); else closeStreams();
  showCounters(live);
}

function showArmed() {
  const a = $("armed");
  a.textContent = S.armed === null ? "stim: -" : S.armed ? "ARMED" : "disarmed";
  a.className = "badge " + (S.armed ? "armed" : "disarmed");
  a.dataset.armed = String(S.armed);
}

function setOutputNames(names) {
  S.outputNames = names;
  // Simulated cortex encodes velocity, so its trajectory in velocity space is the informative one.
  const vx = names.indexOf("vx"), vy = names.indexOf("vy");
  S.pair = vx >= 0 && vy >= 0 ? [vx, vy] : [0, 1];
  $("traj-axes").textContent = names.length >= 2 ? `${names[S.pair[0]]}, ${names[S.pair[1]]}`
    : "outputs 0, 1";
  const sel = $("marker");
  sel.replaceChildren(...names.map((n, i) => new Option(n, i)));
  if (!names.length) sel.append(new Option("output 0", 0));
}

// ------------------------------------------------------------------ streams
function wsUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

/** A WebSocket that carries the read token: a browser cannot set a header on one, so the
 * token travels as the subprotocol "bearer.<token>" and the server answers "spikeloop". */
function openSocket(path) {
  const t = readToken();
  return new WebSocket(wsUrl(path), t ? ["spikeloop", "bearer." + t] : []);
}

function openStreams(row) {
  const sid = row.id;
  if (!S.stream) {
    const binMs = row.config.bin_ms || 20;
    const every = Math.max(1, Math.ceil(20 / binMs));  // decoded points at <= 50 per second
    S.stream = openSocket(`/sessions/${sid}/stream?every=${every}`);
    S.stream.onmessage = (e) => { if (S.sid === sid) onStream(JSON.parse(e.data)); };
    S.stream.onclose = () => { if (S.sid === sid) S.stream = null; };
  }
  if (!S.raster) {
    S.raster = openSocket(`/ui/sessions/${sid}/raster?hz=10`);
    S.raster.onmessage = (e) => { if (S.sid === sid) onRaster(JSON.parse(e.data)); };
    S.raster.onclose = () => { if (S.sid === sid) S.raster = null; };
  }
}

function closeStreams() {
  for (const k of ["stream", "raster"]) {
    if (S[k]) { S[k].onclose = null; S[k].close(); S[k] = null; }
  }
}

function onRaster(m) {
  if (m.t_ns === null) return;
  const end = m.t_ns / 1e9;
  S.rasterEnd = end;
  S.channels = Math.max(1, m.channels);
  for (let i = 0; i < m.ids.length; i++) {
    S.spikes.t.push(end - m.ago_ms[i] / 1000);
    S.spikes.ch.push(m.ids[i]);
  }
  S.spikesSeen += m.total;
  S.rasterUpdates++;
  let cut = 0;
  while (cut < S.spikes.t.length && S.spikes.t[cut] < end - RASTER_S) cut++;
  if (cut) { S.spikes.t.splice(0, cut); S.spikes.ch.splice(0, cut); }
  const c = $("raster");
  c.dataset.spikes = S.spikesSeen;
  c.dataset.updates = S.rasterUpdates;
  $("raster-rate").textContent = `· ${S.channels} channels · ${m.total} spikes in this update`;
}

function onStream(m) {
  if (m.kind === "decoded") {
    S.decoded.push({ t: m.t_ns / 1e9, d: m.decoded, truth: m.truth });
    const t0 = m.t_ns / 1e9 - SERIES_S;
    while (S.decoded.length && S.decoded[0].t < t0) S.decoded.shift();
  } else if (m.kind === "stim.command") {
    onStim(m);
  } else if (m.kind === "heartbeat") {
    S.armed = m.armed;
    showArmed();
  }
}

function onStim(m) {
  const t = m.t_ns / 1e9, cmd = m.cmd || {};
  const v = cmd.amplitude_ma ?? cmd.power_mw ?? 0;
  const st = S.stim, n = st.t.length;
  if (!n || v !== st.v[n - 1] || t - st.t[n - 1] >= 0.02) {  // keep changes, decimate the rest
    st.t.push(t); st.v.push(v);
    while (st.t.length && st.t[0] < t - SERIES_S) { st.t.shift(); st.v.shift(); }
  }
  if (m.armed !== undefined && m.armed !== S.armed) { S.armed = m.armed; showArmed(); }
  if (!["clamped", "refused", "safe"].includes(m.status)) return;
  const key = m.status + ": " + (m.reasons || []).join("; ");
  const last = S.events[S.events.length - 1];
  if (last && last.key === key) {  // one line per run of identical events
    last.count++; last.bin = m.bin;
  } else {
    S.events.push({ key, count: 1, bin: m.bin, first: m.bin });
    if (S.events.length > 200) S.events.shift();
  }
  drawEvents();
}

function drawEvents() {
  $("events").replaceChildren(...S.events.slice().reverse().map((e) => {
    const li = document.createElement("li");
    const span = e.count > 1 ? ` ×${e.count} (bins ${e.first}–${e.bin})` : ` (bin ${e.bin})`;
    li.textContent = e.key + span;
    return li;
  }));
}

// ------------------------------------------------------------------ plots
function draw() {
  if (!S.sid) return;
  const drawn = Plot.raster($("raster"), S.spikes.t, S.spikes.ch, S.channels, RASTER_S,
                            S.rasterEnd);
  $("raster").dataset.drawn = drawn;
  const dec = S.decoded;
  const end = dec.length ? dec[dec.length - 1].t : 0;
  const recent = dec.filter((p) => p.t >= end - TRAJ_S);
  const [a, b] = S.pair;
  const withTruth = recent.filter((p) => p.truth && p.truth.length > Math.max(a, b));
  Plot.xy($("trajectory"), [
    { x: withTruth.map((p) => p.truth[a]), y: withTruth.map((p) => p.truth[b]), color: "#ffb74d" },
    { x: recent.map((p) => p.d[a] ?? 0), y: recent.map((p) => p.d[b] ?? 0), color: "#4fc3f7" },
  ]);
  $("trajectory").dataset.points = dec.length;
  $("r2").textContent = r2Text(dec);
  const k = Number($("marker").value || 0);
  Plot.series($("biomarker"), [
    { t: dec.map((p) => p.t), v: dec.map((p) => p.d[k] ?? 0), color: "#4fc3f7", axis: "left" },
    { t: S.stim.t, v: S.stim.v, color: "#ef5350", axis: "right", step: true },
  ], SERIES_S, Math.max(end, S.stim.t[S.stim.t.length - 1] || 0));
}

function r2Text(dec) {
  const pts = dec.filter((p) => p.truth && p.truth.length === p.d.length);
  if (pts.length < 100) return "";  // as the CLI (clients/stream.py RunningR2): too few bins mean nothing
  const names = S.outputNames.length ? S.outputNames : pts[0].d.map((_, i) => "out" + i);
  return "R² over the last 20 s: " + names.map((name, i) => {
    const mean = pts.reduce((a, p) => a + p.truth[i], 0) / pts.length;
    let res = 0, tot = 0;
    for (const p of pts) { res += (p.truth[i] - p.d[i]) ** 2; tot += (p.truth[i] - mean) ** 2; }
    return `${name} ${tot > 0 ? (1 - res / tot).toFixed(2) : "-"}`;
  }).join(" · ");
}

async function pollMetrics() {
  const row = S.row;
  if (!row || !ACTIVE.includes(row.state) || document.hidden) return;
  let m;
  try { m = await api("GET", `/sessions/${row.id}/metrics`); } catch { return; }
  const h = m.stages.e2e;
  const labels = h.buckets_us.map((b) => "≤" + (b >= 1000 ? b / 1000 + "ms" : b + "µs"));
  labels.push(">" + labels[labels.length - 1].slice(1));
  Plot.bars($("latency"), labels, h.counts, "#4fc3f7");
  const p = m.latency_e2e;
  $("latency-pct").textContent = p.p50_us === undefined ? "no samples yet" :
    `p50 ${p.p50_us.toFixed(0)} µs · p99 ${p.p99_us.toFixed(0)} µs · ` +
    `p99.9 ${p.p999_us.toFixed(0)} µs · max ${p.max_us.toFixed(0)} µs · n ${h.count}`;
}

function showCounters(live) {
  const rows = Object.entries(live.counters || {});
  const rejected = Object.values(live.rejected || {}).reduce((a, b) => a + b, 0);
  rows.push(["rejected frames", rejected], ["late events", live.late_events ?? 0]);
  if (live.calibration && live.state === "calibrating") {
    rows.push(["calibration bins", `${live.calibration.bins} / ${live.calibration.needed}`]);
    if (live.calibration.waiting) rows.push(["calibration waits", live.calibration.waiting]);
  }
  $("counters").tBodies[0].replaceChildren(...rows.sort().map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.cells[0].textContent = k;
    tr.cells[1].textContent = v;
    return tr;
  }));
}

// ------------------------------------------------------------------ controls
/** Ask before acting. ``ack`` (a sentence) must be ticked; the token is sent with ``action``. */
function confirmThen({ title, body, ack, ok }, action) {
  const dlg = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").textContent = body;
  $("confirm-ack").hidden = !ack;
  $("confirm-check").checked = false;
  $("confirm-check-text").textContent = ack || "";
  $("confirm-token").value = $("token").value;
  $("confirm-error").textContent = "";
  $("confirm-ok").textContent = ok;
  const update = () => {
    $("confirm-ok").disabled = (ack && !$("confirm-check").checked) ||
      !$("confirm-token").value.trim();
  };
  $("confirm-check").onchange = update;
  $("confirm-token").oninput = update;
  update();
  $("confirm-ok").onclick = async (e) => {
    e.preventDefault();
    $("confirm-ok").disabled = true;
    try {
      await action($("confirm-token").value.trim());
      dlg.close();
    } catch (err) {
      $("confirm-error").textContent = err.message;
      update();
    }
  };
  dlg.showModal();
}

$("arm").onclick = () => confirmThen({
  title: "Arm stimulation",
  body: `Session ${S.sid}: the policy's commands will reach the stimulator, within the ` +
        "safety limits shown on this page.",
  ack: "I confirm stimulation may now be delivered to the subject.",
  ok: "Arm",
}, async (token) => {
  const r = await api("POST", `/sessions/${S.sid}/arm`, null, token);
  S.armed = r.armed; showArmed(); $("arm").disabled = r.armed;
  notice(`session ${S.sid} armed`);
});

$("disarm").onclick = () => confirmThen({
  title: "Disarm stimulation",
  body: `Session ${S.sid}: the stimulator goes to its safe state now.`,
  ok: "Disarm now",
}, async (token) => {
  const r = await api("POST", `/sessions/${S.sid}/disarm`, null, token);
  S.armed = r.armed; showArmed(); $("arm").disabled = r.armed;
  notice(`session ${S.sid} disarmed`);
});

for (const what of ["start", "stop"]) {
  $(what).onclick = async () => {
    const token = operatorToken();
    if (!token) return;
    try {
      if (what === "stop") {
        // Leave the streams while the session still publishes, so the server's
        // stream handlers see the close and end (they notice only when sending).
        closeStreams();
        await new Promise((r) => setTimeout(r, 300));
      }
      showSession(await api("POST", `/sessions/${S.sid}/${what}`, null, token));
      notice(`session ${S.sid}: ${what} requested`);
    } catch (e) { notice(e.message, true); }
  };
}

let limitsLoaded = {};
async function loadLimits() {
  const sid = S.sid;
  let lim;
  try { lim = await api("GET", `/sessions/${sid}/limits`); } catch (e) { return; }
  if (sid !== S.sid) return;
  limitsLoaded = lim;
  $("limits").querySelector(".fields").replaceChildren(...Object.entries(lim).flatMap(([k, v]) => {
    const l = document.createElement("label");
    l.textContent = k;
    l.htmlFor = "lim-" + k;
    const i = document.createElement("input");
    Object.assign(i, { id: "lim-" + k, name: k, type: "number", step: "any", value: v });
    i.oninput = () => i.classList.toggle("changed", Number(i.value) !== limitsLoaded[k]);
    return [l, i];
  }));
}

$("limits").onsubmit = (e) => {
  e.preventDefault();
  const next = { ...limitsLoaded }, changes = [];
  for (const i of $("limits").querySelectorAll("input")) {
    const v = Number(i.value);
    if (v !== limitsLoaded[i.name]) { next[i.name] = v; changes.push(`${i.name} ${limitsLoaded[i.name]} → ${v}`); }
  }
  if (!changes.length) { notice("limits unchanged"); return; }
  confirmThen({
    title: "Apply safety limits",
    body: `Session ${S.sid}: ${changes.join(", ")}.`,
    ack: "I have checked these limits for this subject and electrode.",
    ok: "Apply",
  }, async (token) => {
    await api("PUT", `/sessions/${S.sid}/limits`, next, token);
    notice(`limits applied to ${S.sid}`);
    await loadLimits();
  });
};

// ------------------------------------------------------------------ start
$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("input", () => {
  sessionStorage.setItem(TOKEN_KEY, readToken());
  closeStreams();  // reopened with the new token by the next refresh
  refresh();
});
api("GET", "/healthz").then((h) => { $("version").textContent = "v" + h.version; })
  .catch(() => {});
refresh();
setInterval(refresh, POLL_MS);
setInterval(pollMetrics, POLL_MS);
setInterval(draw, DRAW_MS);
