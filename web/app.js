// Relay live page, built on /relay.js: no build step, nothing fetched from outside the gateway (the form
// posts to the ingest API named in <meta name="relay-ingest-url">).
import { Relay, isAfter as after, matches } from "/relay.js";

const MAX_ON_SCREEN = 500;          // DOM cap: older cards are removed, the count keeps going
const RATE_WINDOW_MS = 10000;
const PAGE_LIMIT = 1000;
const BACKOFF_MAX_MS = 10000;

const ingestUrl = document.querySelector('meta[name="relay-ingest-url"]').content.replace(/\/$/, "");
const accessToken = new URLSearchParams(location.search).get("access_token");
const $ = (id) => document.getElementById(id);

let lastStreamId = null;   // the newest stream id shown
let total = 0;
let arrivals = [];         // arrival times within the rate window
let filling = null;        // a gap being filled from the REST API: messages wait until it is done
let waiting = [];          // messages that arrived during a fill
let generation = 0;        // bumped when the pattern changes: late answers of the old one are dropped
let subscription = null;

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
    ["channel", message.channel, "channel"],
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

// A notice in the feed where messages were missing from the stream.
function showGap(gap, filled) {
  const li = document.createElement("li");
  li.className = "gap";
  li.textContent = filled
    ? `gap after ${gap.since}: ${filled} message(s) read back from the store`
    : `gap after ${gap.since}: messages up to ${gap.oldest} are gone`;
  $("messages").prepend(li);
}

// Messages after `since` that the stream no longer holds come from the ingest API, page by page, up to
// the stream's oldest entry; live messages wait meanwhile, then are shown in order. A failed fill is
// retried (never skipped: skipping would move past messages never shown).
async function fillGap(pattern, gap, gen) {
  const exact = !pattern.endsWith("*");
  const path = exact ? `/channels/${encodeURIComponent(pattern)}/messages` : "/messages";
  let cursor = gap.since, delay = 1000, filled = 0;
  for (;;) {
    try {
      const res = await fetch(`${ingestUrl}${path}?after=${encodeURIComponent(cursor)}&limit=${PAGE_LIMIT}`, { headers: authHeaders() });
      if (!res.ok) throw new Error(`GET ${path}: ${res.status}`);
      const page = await res.json();
      if (gen !== generation) return;
      let more = res.headers.has("link");
      for (const m of page) {
        if (!after(gap.oldest, m.stream_id)) { more = false; break; }
        cursor = m.stream_id;
        if (matches(pattern, m.channel)) { show(m, null, false); filled++; }
      }
      if (!more) return showGap(gap, filled);
    } catch (e) {
      if (gen !== generation) return;
      setStatus("connecting", "filling a gap…");
      console.warn("could not fill the gap from the API, retrying:", e);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }
}

function onMessage(message, frameText) {
  if (filling) waiting.push([message, frameText]); else show(message, rawPayload(frameText), true);
}

function onGap(pattern, gap) {
  const gen = generation;
  filling = fillGap(pattern, gap, gen).then(() => {
    if (gen !== generation) return;
    filling = null;
    if (relay.state === "open") setStatus("live", "live");
    while (waiting.length && !filling) { const [m, t] = waiting.shift(); show(m, rawPayload(t), true); }
  });
}

const relay = new Relay(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, {
  token: async () => accessToken,
});
relay.on("state", (state) => {
  if (state === "open" && !filling) setStatus("live", "live");
  else if (state === "connecting") setStatus(lastStreamId ? "reconnecting" : "connecting", lastStreamId ? "reconnecting…" : "connecting…");
  else if (state === "closed") setStatus("offline", "offline");
});

// Subscribes the feed to `pattern`, from now on; the feed starts over.
function follow(pattern) {
  generation++;
  filling = null; waiting = [];
  if (subscription) subscription.unsubscribe();
  lastStreamId = null; total = 0; arrivals = [];
  $("messages").replaceChildren();
  $("count").textContent = "0";
  $("empty").hidden = false;
  $("pattern-shown").textContent = pattern;
  subscription = relay.subscribe(pattern, {
    onMessage,
    onGap: (gap) => onGap(pattern, gap),
    onError: (refusal) => setStatus("offline", `${pattern}: ${refusal.title} (${refusal.status})`),
  });
}

$("follow").addEventListener("submit", (ev) => {
  ev.preventDefault();
  follow($("pattern").value.trim() || "*");
});

$("ingest-url").textContent = ingestUrl;
$("compose").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("send-result"), text = $("payload").value;
  const channel = $("channel").value.trim() || "default";
  result.className = ""; result.textContent = "";
  try { JSON.parse(text); } catch (e) { result.className = "error"; result.textContent = "Not JSON: " + e.message; return; }
  $("send").disabled = true;
  try {
    const res = await fetch(`${ingestUrl}/channels/${encodeURIComponent(channel)}/messages`, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: text,
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 202) result.textContent = `Accepted on ${body.channel} · ${body.stream_id}`;
    else { result.className = "error"; result.textContent = `${res.status}: ${body.detail || body.title || "error"}`; }
  } catch (e) {
    result.className = "error"; result.textContent = "Could not reach the ingest API: " + e.message;
  } finally {
    $("send").disabled = false;
  }
});

follow(new URLSearchParams(location.search).get("channels") || "*");
