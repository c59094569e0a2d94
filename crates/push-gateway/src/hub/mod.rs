//! The fan-out hub: every connected client's bounded queue, the recent frames they share, and the one
//! place frames are handed out.
//!
//! Each frame is encoded once by the reader and shared by reference count (`ByteString`), so a message to
//! a thousand clients costs a thousand pointer copies, not a thousand encodings. A client's queue is
//! bounded (`WS_SEND_QUEUE` frames and `WS_SEND_QUEUE_BYTES` bytes): frames are counted in bytes as well
//! as in number because a count alone bounds nothing — 1,024 frames of 1 MiB are a gigabyte per client.
//!
//! A client whose queue fills is not closed at once: one NDJSON post of 10,000 lines reaches the hub
//! faster than any browser tens of milliseconds away can read it, and closing every such browser for one
//! burst would make large posts unusable. Instead the client *falls behind*: the hub stops queueing for it
//! (nobody waits for it, and its queue cannot grow), and its session catches up from the hub's
//! [`history`](Hub::catch_up) — the newest `16 × WS_SEND_QUEUE` frames (at most `4 × WS_SEND_QUEUE_BYTES`),
//! shared by every client, so a burst costs its bytes once — then rejoins the live queue at exactly the
//! position it reached, under the hub's lock: no gap, no duplicate. A client that is still behind after
//! `WS_CATCH_UP_MS` is too slow and is closed with 1013 (see `session.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use model::StreamId;
use tokio::sync::mpsc;

use crate::routing::{Filter, Index};

mod behind;

pub use behind::Behind;

/// One encoded `{"type":"message",…}` frame, the stream position it carries and its channel.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream_id: StreamId,
    pub channel: Arc<str>,
    /// The message's `received_at` (Unix microseconds), for the delivery-delay histogram.
    pub received_at_us: i64,
    pub text: ByteString,
}

/// History kept per frame of `WS_SEND_QUEUE`: a burst up to 16 queues long (16,384 frames by default,
/// more than one post of `MAX_BATCH_LINES`) is caught up from memory.
const HISTORY_PER_QUEUE: usize = 16;
/// History bytes per byte of `WS_SEND_QUEUE_BYTES` (32 MiB by default), whatever the frames' size.
const HISTORY_BYTES_PER_QUEUE_BYTE: usize = 4;

/// What a client session holds: its queue, and the signal that it fell behind.
pub struct Subscription {
    pub id: u64,
    /// The stream position at the moment of subscribing: every later entry is in `frames`.
    pub position: StreamId,
    frames: mpsc::Receiver<Arc<Frame>>,
    /// Bytes of frame text in `frames`.
    queued_bytes: Arc<AtomicUsize>,
    /// Marked when the client's queue overflowed: the hub queues nothing more, and once `frames` is
    /// drained `recv` answers `None`.
    pub behind: Arc<Behind>,
}

impl Subscription {
    /// The next queued frame; `None` when the client fell behind (or was unsubscribed) and everything
    /// queued before that has been taken.
    pub async fn recv(&mut self) -> Option<Arc<Frame>> {
        let frame = self.frames.recv().await?;
        self.queued_bytes
            .fetch_sub(frame.text.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Frame>> {
        let frame = self.frames.try_recv().ok()?;
        self.queued_bytes
            .fetch_sub(frame.text.len(), Ordering::Relaxed);
        Some(frame)
    }
}

struct Client {
    /// `None` while the client is behind: dropping the sender is what ends its session's `recv`.
    frames: Option<mpsc::Sender<Arc<Frame>>>,
    /// The channels it subscribed to.
    filter: Arc<Filter>,
    queued_bytes: Arc<AtomicUsize>,
    behind: Arc<Behind>,
}

/// The clients, the stream position they are at, and the recent frames: every frame after `position`
/// is queued for every client in `by_id`, and every frame after `history_from` is in `history`. All of it
/// changes under one lock, which is what makes `subscribe`'s and `catch_up`'s answers exact.
struct Clients {
    by_id: HashMap<u64, Client>,
    /// `by_id` by what each client subscribed to.
    index: Index,
    /// The newest entry the reader has published (or the position it started from); `None` until the
    /// reader has a position.
    position: Option<StreamId>,
    /// The newest frames, oldest first.
    history: VecDeque<Arc<Frame>>,
    history_bytes: usize,
    /// Every frame published after this position is in `history`: the newest frame dropped from it, or
    /// the reader's starting position.
    history_from: StreamId,
}

/// What [`Hub::catch_up`] found after a client's position.
pub enum CatchUp {
    /// The next frames after it, oldest first.
    Frames(Vec<Arc<Frame>>),
    /// The history no longer reaches back to it: the rest is read from the stream.
    Evicted,
    /// Nothing after it is missing: the client is subscribed again, live from that position.
    Live(Subscription),
}

pub struct Hub {
    clients: Mutex<Clients>,
    next_id: AtomicU64,
    queue: usize,
    queue_bytes: usize,
    history_len: usize,
    history_bytes: usize,
    max_clients: usize,
}

/// Why a client cannot subscribe.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The hub is at `MAX_CONNECTIONS`.
    Full,
    /// The reader has no stream position yet (the gateway is starting, or Redis is away).
    NotReady,
}

impl Hub {
    /// Queues of `queue` frames and `queue_bytes` bytes, for at most `max_clients` clients.
    pub fn new(queue: usize, queue_bytes: usize, max_clients: usize) -> Self {
        Self {
            clients: Mutex::new(Clients {
                by_id: HashMap::new(),
                index: Index::default(),
                position: None,
                history: VecDeque::new(),
                history_bytes: 0,
                history_from: StreamId::new(0, 0),
            }),
            next_id: AtomicU64::new(1),
            queue,
            queue_bytes,
            history_len: queue.saturating_mul(HISTORY_PER_QUEUE).max(1),
            history_bytes: queue_bytes.saturating_mul(HISTORY_BYTES_PER_QUEUE_BYTE),
            max_clients,
        }
    }

    /// The reader's starting position (the newest entry when it started).
    pub fn start_at(&self, position: StreamId) {
        let mut clients = self.lock();
        clients.position = Some(position);
        clients.history.clear();
        clients.history_bytes = 0;
        clients.history_from = position;
    }

    /// Whether the reader has its stream position: before that, `/ws` answers 503.
    pub fn is_ready(&self) -> bool {
        self.lock().position.is_some()
    }

    /// Adds a client for the channels of `filter`. From this moment on, every frame of them that the
    /// reader publishes is queued for it.
    pub fn subscribe(&self, filter: Arc<Filter>) -> Result<Subscription, Refused> {
        let mut clients = self.lock();
        let position = clients.position.ok_or(Refused::NotReady)?;
        if clients.by_id.len() >= self.max_clients {
            return Err(Refused::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(self.register(&mut clients, id, position, filter))
    }

    fn register(
        &self,
        clients: &mut Clients,
        id: u64,
        position: StreamId,
        filter: Arc<Filter>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue);
        let behind = Arc::new(Behind::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let client = Client {
            frames: Some(tx),
            filter: Arc::clone(&filter),
            queued_bytes: Arc::clone(&queued_bytes),
            behind: Arc::clone(&behind),
        };
        if let Some(old) = clients.by_id.insert(id, client) {
            clients.index.remove(id, &old.filter);
        }
        clients.index.add(id, &filter);
        Subscription {
            id,
            position,
            frames: rx,
            queued_bytes,
            behind,
        }
    }

    /// For client `id`, which fell behind and has been sent everything up to `after`: at most `max` of
    /// the frames after it, or — when there are none — a new subscription that continues exactly after
    /// it. (A client that fell behind keeps its place in the count of clients: it is still connected.)
    pub fn catch_up(&self, id: u64, after: StreamId, max: usize) -> CatchUp {
        let mut clients = self.lock();
        let position = clients.position.unwrap_or(after);
        let Some(filter) = clients.by_id.get(&id).map(|c| Arc::clone(&c.filter)) else {
            return CatchUp::Evicted; // unsubscribed meanwhile: the session is ending
        };
        if after >= position {
            // Live again from `position`: anything the stream held past `after` and before `position`
            // (there is none) or after it (the queue) reaches the client exactly once.
            return CatchUp::Live(self.register(&mut clients, id, position, filter));
        }
        if after < clients.history_from {
            return CatchUp::Evicted;
        }
        let start = clients.history.partition_point(|f| f.stream_id <= after);
        let frames: Vec<_> = clients
            .history
            .range(start..)
            .filter(|f| filter.matches(&f.channel))
            .take(max)
            .cloned()
            .collect();
        if frames.is_empty() {
            // Nothing it subscribed to was published after `after`: it has everything, live again.
            return CatchUp::Live(self.register(&mut clients, id, position, filter));
        }
        CatchUp::Frames(frames)
    }

    /// Client `id`'s channels become `filter`'s, from the hub's position on, which this returns (every
    /// frame published after it is routed by the new filter). `None` when the client is gone.
    pub fn set_filter(&self, id: u64, filter: Arc<Filter>) -> Option<StreamId> {
        let mut clients = self.lock();
        let position = clients.position?;
        let old = std::mem::replace(&mut clients.by_id.get_mut(&id)?.filter, Arc::clone(&filter));
        clients.index.remove(id, &old);
        clients.index.add(id, &filter);
        Some(position)
    }

    pub fn unsubscribe(&self, id: u64) {
        let mut clients = self.lock();
        if let Some(client) = clients.by_id.remove(&id) {
            clients.index.remove(id, &client.filter);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `frames`, in order, for every client, and keeps them in the history. A client whose queue
    /// cannot take them falls behind: it is sent nothing more until it catches up. Returns how many
    /// clients fell behind.
    pub fn publish(&self, frames: &[Arc<Frame>]) -> usize {
        let mut fell_behind = 0;
        let mut guard = self.lock();
        let clients = &mut *guard;
        let Some(last) = frames.last() else { return 0 };
        clients.position = Some(last.stream_id);
        for frame in frames {
            clients.history_bytes += frame.text.len();
            clients.history.push_back(Arc::clone(frame));
        }
        while clients.history.len() > self.history_len
            || (clients.history_bytes > self.history_bytes && clients.history.len() > 1)
        {
            let Some(oldest) = clients.history.pop_front() else {
                break;
            };
            clients.history_bytes -= oldest.text.len();
            clients.history_from = oldest.stream_id;
        }
        let max_bytes = self.queue_bytes;
        // Sockets on `*` get the whole batch; every other socket the frames its patterns match, found
        // through the index, so a frame costs what its subscribers cost.
        let mut routed: HashMap<u64, Vec<Arc<Frame>>> = HashMap::new();
        if !clients.index.only_everything() {
            for frame in frames {
                clients.index.for_each_wanting(&frame.channel, |id| {
                    routed.entry(id).or_default().push(Arc::clone(frame));
                });
            }
        }
        let mut closed = Vec::new();
        let targets = clients
            .index
            .everything()
            .iter()
            .map(|&id| (id, frames))
            .chain(routed.iter().map(|(&id, f)| (id, f.as_slice())));
        for (id, frames) in targets {
            let Some(client) = clients.by_id.get_mut(&id) else {
                continue;
            };
            // A client catching up gets nothing here: its session rejoins with a new queue.
            let Some(sender) = &client.frames else {
                continue;
            };
            match offer(sender, &client.queued_bytes, frames, max_bytes) {
                Offered::All => {}
                Offered::Full => {
                    client.frames = None;
                    client.behind.mark();
                    fell_behind += 1;
                }
                // The session has ended; it unsubscribes itself too, whichever comes first.
                Offered::Closed => closed.push(id),
            }
        }
        for id in closed {
            if let Some(client) = clients.by_id.remove(&id) {
                clients.index.remove(id, &client.filter);
            }
        }
        fell_behind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        // A panic while holding this lock cannot leave the state inconsistent (every operation that
        // panics would do so before changing anything), so a poisoned lock is still usable.
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Offered {
    All,
    Full,
    Closed,
}

/// Queues `frames` for one client, up to its bounds.
fn offer(
    sender: &mpsc::Sender<Arc<Frame>>,
    queued_bytes: &AtomicUsize,
    frames: &[Arc<Frame>],
    max_bytes: usize,
) -> Offered {
    for frame in frames {
        let len = frame.text.len();
        let queued = queued_bytes.load(Ordering::Relaxed);
        // One frame larger than the whole budget still goes to a client with nothing waiting: otherwise
        // a single large message would cut off every client.
        if queued > 0 && queued + len > max_bytes {
            return Offered::Full;
        }
        match sender.try_send(Arc::clone(frame)) {
            Ok(()) => {
                queued_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => return Offered::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => return Offered::Closed,
        }
    }
    Offered::All
}

#[cfg(test)]
mod tests;
