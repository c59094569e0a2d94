// Relay live page: no build step, nothing fetched from outside the gateway (the form posts to the ingest
// API named in <meta name="relay-ingest-url">).
"use strict";

const MAX_ON_SCREEN = 500;          // DOM cap: older cards are removed, the count keeps going
const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10000;
const RATE_WINDOW_MS = 10000;
const PAGE_LIMIT = 1000;

const ingestUrl = document.querySelector('meta[name="relay-ingest-url"]').content.replace(/\/$/, "");
const accessToken = new URLSearchParams(location.search).get("access_token");
const $ = (id) => document.getElementById(id);

let lastStreamId = null;   // the newest stream id shown: the resume point
let total = 0;
let arrivals = [];         // arrival times within the rate window
let backoff = BACKOFF_MIN_MS;
let socket = null;
let filling = null;        // a gap being filled from GET /messages: frames wait until it is done
let waiting = [];          // frames that arrived during a fill

// Stream ids compare numerically, part by part ("5-10" is after "5-9").
function parseId(id) { const [ms, seq] = id.split("-"); return [BigInt(ms), BigInt(seq)]; }
function after(a, b) { const [am, as] = parseId(a), [bm, bs] = parseId(b); return am > bm || (am === bm && as > bs); }

function setStatus(state, text) { const el = $("status"); el.dataset.state = state; el.textContent = text; }

function authHeaders() { return accessToken ? { Authorization: "Bearer " + accessToken } : {}; }

// Pretty-prints JSON *text* without parsing it into numbers, so 30-digit integers and 1e-300 show exactly
// as posted.
function prettyJson(text) {
  let out = "", indent = 0, inString = false, escaped = false;
  const nl = () => "\n" + "  ".repeat(indent);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (escaped) escaped = false; else if (c === "\\") escaped = true; else if (c === '"') inString = false;
      continue;
    }
    if (c === " " || c === "\n" || c === "\r" || c === "\t") continue;
    if (c === '"') { inString = true; out += c; continue; }
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      let j = i + 1; while (" \n\r\t".includes(text[j])) j++;
      if (text[j] === close) { out += c + close; i = j; continue; }
      indent++; out += c + nl(); continue;
    }
    if (c === "}" || c === "]") { indent--; out += nl() + c; continue; }
    if (c === ",") { out += "," + nl(); continue; }
    if (c === ":") { out += ": "; continue; }
    out += c;
  }
  return out;
}

// The payload's own text from a message frame: the server writes `payload` last in `data`.
function rawPayload(frameText) {
  const at = frameText.indexOf('"payload":');
  return at < 0 ? null : frameText.slice(at + 10, -2);
}

function show(message, payloadText, fresh) {
  if (lastStreamId !== null && !after(message.stream_id, lastStreamId)) return; // already shown
  lastStreamId = message.stream_id;
  total++;
  arrivals.push(performance.now());
  const li = document.createElement("li");
  li.className = fresh ? "msg fresh" : "msg";
  li.dataset.streamId = message.stream_id;
  li.dataset.id = message.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  for (const [cls, text, title] of [
    ["sid", message.stream_id, "stream id"],
    ["id", message.id, "message id"],
    ["time", new Date(message.received_at).toLocaleTimeString(undefined, { hour12: false }) + "." +
      message.received_at.slice(20, 23), message.received_at],
  ]) {
    const span = document.createElement("span");
    span.className = cls; span.textContent = text; span.title = title;
    meta.appendChild(span);
  }
  const pre = document.createElement("pre");
  pre.className = "payload";
  // textContent, never innerHTML: a payload is shown as text, whatever it contains.
  pre.textContent = prettyJson(payloadText ?? JSON.stringify(message.payload));
  li.append(meta, pre);
  const list = $("messages");
  list.prepend(li);
  while (list.childElementCount > MAX_ON_SCREEN) { list.lastElementChild.remove(); $("trimmed").hidden = false; }
  $("empty").hidden = true;
  $("count").textContent = total.toLocaleString();
}

function tickRate() {
  const now = performance.now();
  while (arrivals.length && now - arrivals[0] > RATE_WINDOW_MS) arrivals.shift();
  const span = Math.min(RATE_WINDOW_MS, arrivals.length ? now - arrivals[0] : RATE_WINDOW_MS) / 1000;
  $("rate").textContent = (arrivals.length / Math.max(span, 1)).toFixed(1);
}
setInterval(tickRate, 500);

// Entries after `since` that the stream no longer holds come from the ingest API, page by page, up to the
// stream's oldest entry; live frames wait meanwhile, then are shown in order. A failed fill is retried
// (never skipped: skipping would move the resume point past messages never shown).
async function fillGap(since, oldest, gen) {
  let cursor = since, delay = 1000;
  for (;;) {
    try {
      const res = await fetch(`${ingestUrl}/messages?after=${encodeURIComponent(cursor)}&limit=${PAGE_LIMIT}`, { headers: authHeaders() });
      if (!res.ok) throw new Error(`GET /messages: ${res.status}`);
      const page = await res.json();
      if (gen !== generation) return;
      for (const m of page) {
        if (!after(oldest, m.stream_id)) return;
        show(m, null, false);
        cursor = m.stream_id;
      }
      if (page.length < PAGE_LIMIT) return;
    } catch (e) {
      if (gen !== generation) return;
      setStatus("reconnecting", "filling a gap…");
      console.warn("could not fill the gap from the API, retrying:", e);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }
}

function handleFrame(text) {
  const frame = JSON.parse(text);
  if (frame.type === "message") show(frame.data, rawPayload(text), true);
  else if (frame.type === "hello") {
    // Where this connection starts: resume from here even if no message arrives before a disconnect.
    if (lastStreamId === null) lastStreamId = frame.position;
  } else if (frame.type === "gap") {
    const gen = generation;
    filling = fillGap(frame.since, frame.oldest, gen).then(() => {
      if (gen !== generation) return;
      filling = null;
      if (socket && socket.readyState === WebSocket.OPEN) setStatus("live", "live");
      drain();
    });
  }
}

// Shows queued frames in order, stopping if one of them starts another gap fill.
function drain() {
  while (waiting.length && !filling) handleFrame(waiting.shift());
}

let generation = 0;

function connect() {
  generation++;
  filling = null;
  waiting = [];
  const params = new URLSearchParams();
  if (lastStreamId) params.set("since", lastStreamId);
  if (accessToken) params.set("access_token", accessToken);
  const query = params.toString();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${query ? "?" + query : ""}`;
  setStatus(lastStreamId ? "reconnecting" : "connecting", lastStreamId ? "reconnecting…" : "connecting…");
  const ws = new WebSocket(url);
  socket = ws;
  ws.onopen = () => { backoff = BACKOFF_MIN_MS; setStatus("live", "live"); };
  ws.onmessage = (ev) => {
    if (ws !== socket) return; // a frame from a connection that was replaced
    if (filling) waiting.push(ev.data); else handleFrame(ev.data);
  };
  ws.onclose = (ev) => {
    if (ws !== socket) return;
    const delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    setStatus("offline", `offline (${ev.code || "no connection"}) · retrying in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  };
}

$("ingest-url").textContent = ingestUrl + "/messages";
$("compose").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("send-result"), text = $("payload").value;
  result.className = ""; result.textContent = "";
  try { JSON.parse(text); } catch (e) { result.className = "error"; result.textContent = "Not JSON: " + e.message; return; }
  $("send").disabled = true;
  try {
    const res = await fetch(`${ingestUrl}/messages`, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: text,
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 202) result.textContent = "Accepted · " + body.stream_id;
    else { result.className = "error"; result.textContent = `${res.status}: ${body.detail || body.title || "error"}`; }
  } catch (e) {
    result.className = "error"; result.textContent = "Could not reach the ingest API: " + e.message;
  } finally {
    $("send").disabled = false;
  }
});

connect();
