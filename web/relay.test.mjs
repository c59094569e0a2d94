// Tests of /relay.js without a browser or a server: a fake WebSocket, fake timers and a fake clock.
// Run by `cargo nextest` (push-gateway's client test) with `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Relay, backoff, isAfter } from "./relay.js";

function harness({ random = () => 0.5 } = {}) {
  const sockets = [], timers = [];
  let clock = 0, tokens = 0;
  class FakeSocket {
    constructor(url) { this.url = new URL(url); this.closed = null; sockets.push(this); }
    close(code) { this.closed = code; }
    open() { this.onopen?.(); }
    send(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
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

test("each message is delivered once, in order, across reconnections, with a fresh token each time", async () => {
  const h = harness();
  const got = [];
  const sub = h.relay.subscribe("chat.*", { onMessage: (m) => got.push(m.stream_id) });
  await h.settle();
  let ws = h.sockets[0];
  assert.equal(ws.url.searchParams.get("channels"), "chat.*");
  assert.equal(ws.url.searchParams.get("since"), null);
  assert.equal(ws.url.searchParams.get("access_token"), "token-1");
  ws.open();
  ws.send({ type: "hello", position: "1-0" });
  ws.send(message("1-1", 1));
  ws.send(message("1-2", 2));
  ws.drop();
  assert.equal(h.timers.length, 1, "a reconnect is scheduled");
  h.timers[0].fn();
  await h.settle();
  ws = h.sockets[1];
  assert.equal(ws.url.searchParams.get("since"), "1-2", "resumes from its position");
  assert.equal(ws.url.searchParams.get("access_token"), "token-2", "asks for a new token");
  ws.open();
  ws.send(message("1-2", 2)); // the server's replay overlaps
  ws.send(message("1-3", 3));
  ws.send({ type: "something-new" }); // unknown frame types are ignored
  assert.deepEqual(got, ["1-1", "1-2", "1-3"]);
  assert.equal(sub.position, "1-3");
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
  assert.equal(h.sockets[0].url.searchParams.get("since"), "7-0");
  h.sockets[0].open();
  h.sockets[0].send({ type: "gap", since: "7-0", oldest: "9-0" });
  assert.deepEqual(gaps, [{ type: "gap", since: "7-0", oldest: "9-0" }]);
});
