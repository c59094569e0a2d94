// Tests of /relay.js without a browser or a server: a fake WebSocket, fake timers and a fake clock.
// Run by `cargo nextest` (push-gateway's client test) with `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Relay, backoff, isAfter, matches } from "./relay.js";

function harness({ random = () => 0.5 } = {}) {
  const sockets = [], timers = [];
  let clock = 0, tokens = 0;
  class FakeSocket {
    constructor(url) { this.url = new URL(url); this.closed = null; this.sent = []; sockets.push(this); }
    close(code) { this.closed = code; }
    send(text) { this.sent.push(JSON.parse(text)); }
    open() { this.onopen?.(); }
    push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
    drop(code = 1006) { this.onclose?.({ code }); }
  }
  const relay = new Relay("ws://relay.test/ws", {
    WebSocket: FakeSocket, random, now: () => clock,
    token: async () => `token-${++tokens}`,
    timers: { setTimeout: (fn, ms) => { timers.push({ fn, ms }); return timers.length; }, clearTimeout: () => {} },
  });
  const settle = () => new Promise((r) => setImmediate(r));
  return { relay, sockets, timers, settle, advance: (ms) => { clock += ms; }, tokens: () => tokens };
}

const message = (id, n, channel = "chat.a") =>
  ({ type: "message", data: { id: `m${n}`, channel, stream_id: id, received_at: "2026-12-04T00:00:00.000000Z", payload: { n } } });
const subscribed = (channel, position) => ({ type: "subscribed", channel, position });

test("stream ids compare as numbers", () => {
  assert.ok(isAfter("5-10", "5-9"));
  assert.ok(isAfter("10-0", "9-99"));
  assert.ok(!isAfter("5-9", "5-9"));
});

test("the backoff grows to 30 s and is jittered over all of it", () => {
  const top = [0, 1, 2, 3, 4, 5, 6, 7, 10].map((n) => backoff(n, () => 0.999999));
  assert.deepEqual(top, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
  assert.equal(backoff(5, () => 0), 0, "full jitter: any wait from zero");
  const waits = new Set(Array.from({ length: 50 }, () => backoff(6)));
  assert.ok(waits.size > 40, "random waits, not one fixed delay");
  for (const w of waits) assert.ok(w >= 0 && w < 30000);
});

test("patterns match a channel name, or a prefix before *", () => {
  assert.ok(matches("*", "anything"));
  assert.ok(matches("chat.*", "chat.a.b"));
  assert.ok(!matches("chat.*", "chat"));
  assert.ok(matches("news", "news"));
  assert.ok(!matches("news", "news.x"));
});

test("each message is delivered once, in order, across reconnections, with a fresh token each time", async () => {
  const h = harness();
  const got = [];
  const sub = h.relay.subscribe("chat.*", { onMessage: (m) => got.push(m.stream_id) });
  await h.settle();
  let ws = h.sockets[0];
  assert.equal(ws.url.searchParams.get("channels"), "", "one socket, subscriptions by frames");
  assert.equal(ws.url.searchParams.get("access_token"), "token-1");
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "subscribe", channel: "chat.*" }]);
  ws.push(subscribed("chat.*", "1-0"));
  ws.push(message("1-1", 1));
  ws.push(message("1-2", 2));
  ws.drop();
  assert.equal(h.timers.length, 1, "a reconnect is scheduled");
  h.timers[0].fn();
  await h.settle();
  ws = h.sockets[1];
  assert.equal(ws.url.searchParams.get("access_token"), "token-2", "asks for a new token");
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "subscribe", channel: "chat.*", since: "1-2" }], "resumes from its position");
  ws.push(message("1-2", 2)); // before `subscribed`: not this subscription's yet
  ws.push(subscribed("chat.*", "1-2"));
  ws.push(message("1-2", 2)); // the server's replay overlaps
  ws.push(message("1-3", 3));
  ws.push({ type: "something-new" }); // unknown frame types are ignored
  assert.deepEqual(got, ["1-1", "1-2", "1-3"]);
  assert.equal(sub.position, "1-3");
});

test("several subscriptions share one socket, each with its own position", async () => {
  const h = harness();
  const got = { chat: [], news: [] };
  const chat = h.relay.subscribe("chat.*", { onMessage: (m) => got.chat.push(m.stream_id) });
  const news = h.relay.subscribe("news", { since: "1-0", onMessage: (m) => got.news.push(m.stream_id) });
  await h.settle();
  assert.equal(h.sockets.length, 1);
  const ws = h.sockets[0];
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "subscribe", channel: "chat.*" }, { type: "subscribe", channel: "news", since: "1-0" }]);
  ws.push(subscribed("chat.*", "2-0"));
  ws.push(subscribed("news", "1-0"));
  ws.push(message("1-5", 5, "news"));
  ws.push(message("2-1", 6, "chat.b"));
  ws.push(message("2-2", 7, "weather")); // nobody's
  assert.deepEqual(got, { chat: ["2-1"], news: ["1-5"] });
  assert.deepEqual([chat.position, news.position], ["2-1", "1-5"]);
  const later = h.relay.subscribe("weather");
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "weather" }, "sent on the open socket");
  news.unsubscribe();
  assert.deepEqual(ws.sent.at(-1), { type: "unsubscribe", channel: "news" });
  const again = [];
  const renewed = h.relay.subscribe("news", { onMessage: (m) => again.push(m.stream_id) });
  ws.push(message("2-3", 8, "news")); // in flight before `unsubscribed`: the old subscription's
  ws.push({ type: "unsubscribed", channel: "news" });
  ws.push(subscribed("news", "2-3"));
  ws.push(message("2-4", 9, "news"));
  assert.deepEqual([got.news, again], [["1-5"], ["2-4"]]);
  renewed.unsubscribe();
  chat.unsubscribe();
  await h.settle();
  assert.equal(ws.closed, null, "still open for `weather`");
  later.unsubscribe();
  const next = h.relay.subscribe("sport");
  await h.settle();
  assert.equal(ws.closed, null, "one subscription replaced by another in the same turn keeps the socket");
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "sport" });
  next.unsubscribe();
  await h.settle();
  assert.equal(ws.closed, 1000, "closed with the last subscription");
  assert.equal(h.relay.state, "closed");
});

test("a refused subscription is dropped and reported; the others go on", async () => {
  const h = harness();
  const errors = [];
  h.relay.subscribe("chat.*");
  const dup = h.relay.subscribe("chat.a", { onError: (e) => errors.push(e.status) });
  await h.settle();
  const ws = h.sockets[0];
  ws.open();
  ws.push(subscribed("chat.*", "1-0"));
  ws.push({ type: "error", channel: "chat.a", status: 409, title: "overlaps `chat.*`" });
  assert.deepEqual(errors, [409]);
  assert.equal(h.relay.subs.has(dup), false);
  const later = h.relay.subscribe("news", { since: "1-0", onError: (e) => errors.push(e.status) });
  ws.push({ type: "error", channel: "news", status: 503, title: "history unavailable" });
  ws.drop(1013);
  h.timers.at(-1).fn();
  await h.settle();
  h.sockets[1].open();
  assert.deepEqual(h.sockets[1].sent.map((f) => f.channel), ["chat.*", "news"], "the refused one is not asked for again; the unavailable one is");
  assert.equal(h.relay.subs.has(later), true);
  assert.deepEqual(errors, [409]);
});

test("the delays grow while connections fail and start over after a connection that lasted", async () => {
  const h = harness({ random: () => 0.999999 });
  h.relay.subscribe("*");
  await h.settle();
  const fail = async () => { h.sockets.at(-1).drop(); const t = h.timers.at(-1); t.fn(); await h.settle(); return t.ms; };
  const delays = [await fail(), await fail(), await fail(), await fail()];
  assert.deepEqual(delays, [499, 999, 1999, 3999]);
  h.sockets.at(-1).open();
  h.advance(30000);
  assert.equal(await fail(), 499, "reset after 30 s connected");
});

test("a token that expires (4001) reconnects at once; close() stops for good", async () => {
  const h = harness();
  const states = [];
  h.relay.on("state", (s) => states.push(s));
  h.relay.subscribe("chat.*");
  await h.settle();
  h.sockets[0].open();
  h.sockets[0].drop(4001);
  assert.equal(h.timers.at(-1).ms, 0);
  h.timers.at(-1).fn();
  await h.settle();
  assert.equal(h.tokens(), 2);
  h.sockets[1].open();
  h.relay.close();
  assert.equal(h.sockets[1].closed, 1000);
  assert.deepEqual(states, ["connecting", "open", "connecting", "open", "closed"]);
});

test("gaps are reported, and a subscription resumed with since starts from it", async () => {
  const h = harness();
  const gaps = [];
  h.relay.subscribe("news", { since: "7-0", onGap: (g) => gaps.push(g) });
  await h.settle();
  h.sockets[0].open();
  assert.deepEqual(h.sockets[0].sent, [{ type: "subscribe", channel: "news", since: "7-0" }]);
  h.sockets[0].push(subscribed("news", "7-0"));
  h.sockets[0].push({ type: "gap", channel: "news", since: "7-0", oldest: "9-0" });
  assert.deepEqual(gaps, [{ type: "gap", channel: "news", since: "7-0", oldest: "9-0" }]);
});

test("replies to an unsubscribed pattern never start, feed or drop a newer subscription to it", async () => {
  const h = harness();
  const got = [], errors = [];
  const first = h.relay.subscribe("chat.*");
  await h.settle();
  const ws = h.sockets[0];
  ws.open();
  first.unsubscribe(); // before its `subscribed` (a component mounted, unmounted and mounted again)
  const second = h.relay.subscribe("chat.*", { since: "5-0", onMessage: (m) => got.push(m.stream_id), onError: (e) => errors.push(e) });
  ws.push(subscribed("chat.*", "9-0")); // the first one's
  ws.push(message("9-1", 1)); // the first one's, live
  ws.push({ type: "unsubscribed", channel: "chat.*" });
  ws.push(subscribed("chat.*", "5-0")); // the second one's: its replay, then live
  ws.push(message("6-0", 2));
  ws.push(message("9-1", 1));
  ws.push(message("9-2", 3));
  assert.deepEqual(got, ["6-0", "9-1", "9-2"]);
  assert.equal(second.position, "9-2");
  // A refused subscribe, unsubscribed before its refusal: the 409 and the 404 are not the next one's.
  const third = h.relay.subscribe("news");
  third.unsubscribe();
  const fourth = h.relay.subscribe("news", { onError: (e) => errors.push(e) });
  ws.push({ type: "error", channel: "news", status: 409, title: "overlaps" });
  ws.push({ type: "error", channel: "news", status: 404, title: "not subscribed" });
  ws.push(subscribed("news", "9-2"));
  assert.deepEqual(errors, []);
  assert.ok(h.relay.subs.has(fourth));
});
