// Relay's browser client: one ES module, no dependencies (types in relay.d.ts).
//
// One WebSocket carries every subscription. It opens with `?channels=` (no subscription), and each
// subscription sends `{"type": "subscribe", "channel": <pattern>, "since": <position>}` over it; the
// gateway answers `subscribed`, replays what came after the position and goes live for that pattern.
// Each subscription keeps its own position: the stream id of the last message it delivered. After any
// unexpected close the client reconnects with exponential backoff and full jitter (a random wait up to
// 0.5 s, doubling to 30 s; reset once a connection has lasted 30 s), asks `token()` for a fresh
// credential every time, and subscribes every subscription again from its position. A message at or
// before a subscription's position is never delivered again, so each arrives once, in order, across
// reconnections.

const BASE_MS = 500, CAP_MS = 30000, STABLE_MS = 30000;
const TOKEN_EXPIRED = 4001;

// Stream ids ("<ms>-<seq>") compare as numbers, part by part: "5-10" is after "5-9".
const parts = (id) => id.split("-").map(BigInt);
export function isAfter(a, b) {
  const [am, as] = parts(a), [bm, bs] = parts(b);
  return am > bm || (am === bm && as > bs);
}

// Whether `channel` matches `pattern`: a channel name, or a prefix followed by `*`.
export function matches(pattern, channel) {
  return pattern.endsWith("*") ? channel.startsWith(pattern.slice(0, -1)) : channel === pattern;
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
    this.socket = null; // the current socket, open or opening
    this.open = false;
    this.busy = false; // a socket exists, or is being made, or a reconnect is scheduled
    this.attempt = 0;
    this.timer = null;
    this.gen = 0; // which connect() is current: a stale one, past its await, stops there
    this.leaving = new Map(); // per pattern, unsubscribes whose reply has not come yet
  }

  on(event, fn) {
    (this.listeners[event] ||= new Set()).add(fn);
    return () => this.listeners[event].delete(fn);
  }

  subscribe(pattern, { since = null, onMessage = () => {}, onGap = () => {}, onError = () => {} } = {}) {
    const sub = new Subscription(this, pattern, since, onMessage, onGap, onError);
    this.subs.add(sub);
    if (this.closed) return sub;
    if (this.open) this.request(sub);
    else if (!this.busy) this.connect();
    this.setState();
    return sub;
  }

  close() {
    this.closed = true;
    for (const sub of this.subs) sub.done = true;
    this.subs.clear();
    this.idle();
  }

  // "open" while the socket is open, "connecting" while it is not, "closed" when there is nothing to
  // keep open.
  setState() {
    const state = this.closed || !this.subs.size ? "closed" : this.open ? "open" : "connecting";
    if (state === this.state) return;
    this.state = state;
    for (const fn of this.listeners.state) fn(state);
  }

  async connect() {
    const gen = ++this.gen;
    this.busy = true;
    this.timer = null;
    this.setState();
    let credential = null;
    try {
      credential = await this.token();
    } catch (e) {
      return gen === this.gen && this.retry(); // the back end could not mint one now: try again later
    }
    if (gen !== this.gen) return; // idled meanwhile (and perhaps connecting again)
    if (this.closed || !this.subs.size) return this.idle();
    const q = new URLSearchParams({ channels: "" });
    if (credential) q.set("access_token", credential);
    const ws = new this.WebSocket(`${this.url}${this.url.includes("?") ? "&" : "?"}${q}`);
    this.socket = ws;
    let openedAt = null;
    ws.onopen = () => {
      openedAt = this.now();
      this.open = true;
      for (const sub of this.subs) this.request(sub);
      this.setState();
    };
    ws.onmessage = (ev) => this.frame(ev.data);
    ws.onclose = (ev) => {
      if (ws !== this.socket) return;
      this.socket = null;
      this.open = false;
      this.leaving.clear();
      for (const sub of this.subs) sub.active = false;
      // A connection that lasted was healthy: the next failure starts the backoff over.
      if (openedAt !== null && this.now() - openedAt >= STABLE_MS) this.attempt = 0;
      if (ev.code === TOKEN_EXPIRED) this.attempt = 0; // at once, with a fresh token
      this.retry(ev.code === TOKEN_EXPIRED ? 0 : undefined);
    };
  }

  retry(delay = backoff(this.attempt++, this.random)) {
    if (this.closed || !this.subs.size) return this.idle();
    this.setState();
    this.timer = this.timers.setTimeout(() => this.connect(), delay);
  }

  // Nothing to keep open: stop reconnecting and close the socket.
  idle() {
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    const ws = this.socket;
    this.gen++;
    this.leaving.clear();
    Object.assign(this, { timer: null, socket: null, open: false, busy: false });
    if (ws) ws.close(1000, "no subscriptions");
    this.setState();
  }

  send(frame) {
    if (this.open) this.socket.send(JSON.stringify(frame));
  }

  // Asks the gateway for `sub` from its position; it delivers nothing until the gateway says `subscribed`.
  request(sub) {
    sub.active = false;
    this.send({ type: "subscribe", channel: sub.pattern, ...(sub.position && { since: sub.position }) });
  }

  // The subscription a reply names: the first one of that pattern still waiting (or, `active`, started).
  named(pattern, active) {
    for (const sub of this.subs) if (sub.pattern === pattern && sub.active === active) return sub;
  }

  frame(text) {
    const frame = JSON.parse(text);
    // Replies about a pattern that was unsubscribed are the old subscription's until the gateway has
    // answered the unsubscribe (`unsubscribed`, or a 404 when the subscribe had been refused): they must
    // not start, feed or drop a newer subscription to the same pattern.
    const leaving = this.leaving.get(frame.channel) || 0;
    if (leaving && (frame.type === "unsubscribed" || (frame.type === "error" && frame.status === 404))) {
      return this.leaving.set(frame.channel, leaving - 1);
    }
    if (leaving && (frame.type === "subscribed" || frame.type === "error" || frame.type === "gap")) return;
    if (frame.type === "message") {
      const m = frame.data;
      for (const sub of this.subs) if (sub.active && matches(sub.pattern, m.channel)) return sub.deliver(m, text);
    } else if (frame.type === "subscribed") {
      const sub = this.named(frame.channel, false);
      if (!sub) return;
      sub.active = true;
      // Where a subscription without `since` starts: resume from there even before a first message.
      if (!sub.position) sub.position = frame.position;
    } else if (frame.type === "gap") {
      this.named(frame.channel, true)?.onGap(frame);
    } else if (frame.type === "error" && frame.channel && frame.status < 500) {
      // Refused (overlap, malformed, forbidden, too many): asking again would be refused again. A 503
      // (history unavailable) is followed by a close, and the reconnect asks again.
      const sub = this.named(frame.channel, false);
      if (!sub) return;
      sub.drop();
      sub.onError(frame);
    } // other types (hello, unsubscribed, …): nothing to do, as the protocol allows
  }
}

class Subscription {
  constructor(relay, pattern, since, onMessage, onGap, onError) {
    Object.assign(this, { relay, pattern, position: since, onMessage, onGap, onError });
    this.active = false;
    this.done = false;
  }

  deliver(m, text) {
    if (this.position && !isAfter(m.stream_id, this.position)) return; // delivered already
    this.position = m.stream_id;
    this.onMessage(m, text);
  }

  unsubscribe() {
    if (this.done) return;
    const r = this.relay;
    if (r.open) {
      r.send({ type: "unsubscribe", channel: this.pattern });
      r.leaving.set(this.pattern, (r.leaving.get(this.pattern) || 0) + 1);
    }
    this.drop();
  }

  drop() {
    const r = this.relay;
    this.done = true;
    r.subs.delete(this);
    // The last one gone: close the socket, unless a new subscription comes in the same turn (a page
    // that changes its pattern unsubscribes the old one first, since the two would overlap).
    if (!r.subs.size) queueMicrotask(() => r.subs.size || r.idle());
  }
}
