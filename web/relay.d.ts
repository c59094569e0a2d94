// Types of Relay's browser client, /relay.js.

/** A persisted (or streamed) message, as the gateway and the REST API send it. */
export interface Message {
  id: string;
  channel: string;
  /** "<ms>-<seq>": the one total order of the pipeline. */
  stream_id: string;
  /** RFC 3339, UTC, microseconds. */
  received_at: string;
  payload: unknown;
}

/** Messages after `since` that are gone; delivery goes on from `oldest`. */
export interface Gap {
  type: "gap";
  since: string;
  oldest: string;
  channel?: string;
}

/** The gateway refused a subscription (it is dropped: asking again would be refused again). */
export interface Refusal {
  type: "error";
  channel: string;
  /** 400 malformed, 403 not allowed, 409 overlaps another subscription, 429 over MAX_SUBSCRIPTIONS. */
  status: number;
  title: string;
}

export type State = "connecting" | "open" | "closed";

export interface RelayOptions {
  /** Called before every connection: an API key or a signed token, or null for an open Relay. */
  token?: () => Promise<string | null> | string | null;
  /** For tests and non-browser hosts. */
  WebSocket?: { new (url: string): WebSocket };
  random?: () => number;
  now?: () => number;
  timers?: { setTimeout(fn: () => void, ms: number): unknown; clearTimeout(id: unknown): void };
}

export interface SubscribeOptions {
  /** Resume after this stream id; without it, from now. */
  since?: string | null;
  /** Each message once, in order; `frame` is the frame's JSON text (the payload's exact characters). */
  onMessage?: (message: Message, frame: string) => void;
  onGap?: (gap: Gap) => void;
  onError?: (refusal: Refusal) => void;
}

export interface Subscription {
  readonly pattern: string;
  /** The stream id of the last message delivered (or where the subscription started). */
  readonly position: string | null;
  unsubscribe(): void;
}

export class Relay {
  constructor(url: string, options?: RelayOptions);
  readonly state: State;
  subscribe(pattern: string, options?: SubscribeOptions): Subscription;
  on(event: "state", listener: (state: State) => void): () => void;
  close(): void;
}

/** Whether `channel` matches `pattern` (a channel name, or a prefix followed by `*`). */
export function matches(pattern: string, channel: string): boolean;
/** Whether stream id `a` comes after `b`. */
export function isAfter(a: string, b: string): boolean;
/** The wait before reconnect attempt `n`: full jitter over min(30 s, 0.5 s × 2ⁿ). */
export function backoff(n: number, random?: () => number): number;
