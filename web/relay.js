// Relay's browser client: one ES module, no dependencies (types in relay.d.ts).
//
// Each subscription keeps its own position (the stream id of the last message it delivered) and its
// own WebSocket, opened with `?channels=<pattern>&since=<position>`: after any unexpected close it
// reconnects with exponential backoff and full jitter (a random wait up to 0.5 s, doubling to 30 s;
// reset once a connection has lasted 30 s), asks `token()` for a fresh credential every time, and
// resumes from its position. A message at or before the position is never delivered again, so each
// arrives once, in order, across reconnections.

const BASE_MS = 500, CAP_MS = 30000, STABLE_MS = 30000;
const TOKEN_EXPIRED = 4001;

// Stream ids ("<ms>-<seq>") compare as numbers, part by part: "5-10" is after "5-9".
const parts = (id) => id.split("-").map(BigInt);
export function isAfter(a, b) {
  const [am, as] = parts(a), [bm, bs] = parts(b);
  return am > bm || (am === bm && as > bs);
}

// The wait before reconnect attempt `n` (0-based): full jitter over an exponentially growing cap.
export function backoff(n, random = Math.random) {
  return Math.floor(random() * Math.min(CAP_MS, BASE_MS * 2 ** n));
}

export class Relay {
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token || (async () => null);
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.random = options.random || Math.random;
    this.now = options.now || (() => Date.now());
    this.timers = options.timers || globalThis;
    this.subs = new Set();
    this.listeners = { state: new Set() };
    this.state = "closed";
    this.closed = false;
  }

  on(event, fn) {
    (this.listeners[event] ||= new Set()).add(fn);
    return () => this.listeners[event].delete(fn);
  }

  subscribe(pattern, { since = null, onMessage = () => {}, onGap = () => {} } = {}) {
    const sub = new Subscription(this, pattern, since, onMessage, onGap);
    this.subs.add(sub);
    sub.connect();
    return sub;
  }

  close() {
    this.closed = true;
    for (const sub of [...this.subs]) sub.unsubscribe();
    this.setState();
  }

  // "open" when every subscription's socket is open, "connecting" while any is not, "closed" when
  // there is nothing to keep open.
  setState() {
    const subs = [...this.subs];
    const state = this.closed || !subs.length ? "closed"
      : subs.every((s) => s.open) ? "open" : "connecting";
    if (state === this.state) return;
    this.state = state;
    for (const fn of this.listeners.state) fn(state);
  }
}

class Subscription {
  constructor(relay, pattern, since, onMessage, onGap) {
    Object.assign(this, { relay, pattern, position: since, onMessage, onGap });
    this.attempt = 0;
    this.open = false;
    this.done = false;
    this.socket = null;
    this.timer = null;
  }

  async connect() {
    const r = this.relay;
    r.setState();
    let credential = null;
    try {
      credential = await r.token();
    } catch (e) {
      return this.retry(); // the back end could not mint one now: try again later
    }
    if (this.done) return;
    const q = new URLSearchParams({ channels: this.pattern });
    if (this.position) q.set("since", this.position);
    if (credential) q.set("access_token", credential);
    const ws = new r.WebSocket(`${r.url}${r.url.includes("?") ? "&" : "?"}${q}`);
    this.socket = ws;
    let openedAt = null;
    ws.onopen = () => {
      openedAt = r.now();
      this.open = true;
      r.setState();
    };
    ws.onmessage = (ev) => this.frame(ev.data);
    ws.onclose = (ev) => {
      if (ws !== this.socket) return;
      this.open = false;
      this.socket = null;
      if (this.done) return r.setState();
      // A connection that lasted was healthy: the next failure starts the backoff over.
      if (openedAt !== null && r.now() - openedAt >= STABLE_MS) this.attempt = 0;
      if (ev.code === TOKEN_EXPIRED) this.attempt = 0; // at once, with a fresh token
      this.retry(ev.code === TOKEN_EXPIRED ? 0 : undefined);
    };
  }

  retry(delay = backoff(this.attempt++, this.relay.random)) {
    this.relay.setState();
    if (this.done) return;
    this.timer = this.relay.timers.setTimeout(() => this.connect(), delay);
  }

  frame(text) {
    const frame = JSON.parse(text);
    if (frame.type === "message") {
      const m = frame.data;
      if (this.position && !isAfter(m.stream_id, this.position)) return; // delivered already
      this.position = m.stream_id;
      this.onMessage(m, text);
    } else if (frame.type === "hello") {
      // Where a connection without `since` starts: resume from there even before a first message.
      if (!this.position) this.position = frame.position;
    } else if (frame.type === "gap") {
      this.onGap(frame);
    } // other types: ignored, as the protocol says
  }

  unsubscribe() {
    this.done = true;
    this.relay.subs.delete(this);
    if (this.timer !== null) this.relay.timers.clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "unsubscribed");
    this.relay.setState();
  }
}
