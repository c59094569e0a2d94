//! The fan-out hub: every connected client's bounded queue, and the one place frames are handed out.
//!
//! Each frame is encoded once by the reader and shared by reference count (`ByteString`), so a message to
//! a thousand clients costs a thousand pointer copies, not a thousand encodings. A client whose queue is
//! full (more than `WS_SEND_QUEUE` frames, or more than `WS_SEND_QUEUE_BYTES` of them, waiting) is dropped
//! from the hub and told to close with 1013; nobody else waits for it, and it cannot make the gateway's
//! memory grow. Frames are counted in bytes as well as in number because a count alone bounds nothing:
//! 1,024 frames of 1 MiB are a gigabyte per client. (The bytes are shared between clients, so the bound is
//! on what one client can pin, which is what a slow client controls.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use model::StreamId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One encoded `{"type":"message",…}` frame and the stream position it carries.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream_id: StreamId,
    /// The message's `received_at` (Unix microseconds), for the delivery-delay histogram.
    pub received_at_us: i64,
    pub text: ByteString,
}

/// What a client session holds: its queue, and the signal that it fell behind.
pub struct Subscription {
    pub id: u64,
    /// The stream position at the moment of subscribing: every later entry is in `frames`.
    pub position: StreamId,
    frames: mpsc::Receiver<Arc<Frame>>,
    /// Bytes of frame text in `frames`.
    queued_bytes: Arc<AtomicUsize>,
    /// Cancelled when the client's queue overflowed: the session closes with 1013.
    pub too_slow: CancellationToken,
}

impl Subscription {
    /// The next queued frame; `None` when the hub dropped this client.
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
    frames: mpsc::Sender<Arc<Frame>>,
    queued_bytes: Arc<AtomicUsize>,
    too_slow: CancellationToken,
}

/// The clients and the stream position they are at: every frame after `position` is queued for every
/// client in `by_id`. Both change under one lock, which is what makes `subscribe`'s answer exact.
#[derive(Default)]
struct Clients {
    by_id: HashMap<u64, Client>,
    /// The newest entry the reader has published (or the position it started from); `None` until the
    /// reader has a position.
    position: Option<StreamId>,
}

pub struct Hub {
    clients: Mutex<Clients>,
    next_id: AtomicU64,
    queue: usize,
    queue_bytes: usize,
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
            clients: Mutex::new(Clients::default()),
            next_id: AtomicU64::new(1),
            queue,
            queue_bytes,
            max_clients,
        }
    }

    /// The reader's starting position (the newest entry when it started).
    pub fn start_at(&self, position: StreamId) {
        self.lock().position = Some(position);
    }

    /// Whether the reader has its stream position: before that, `/ws` answers 503.
    pub fn is_ready(&self) -> bool {
        self.lock().position.is_some()
    }

    /// Adds a client. From this moment on, every frame the reader publishes is queued for it.
    pub fn subscribe(&self) -> Result<Subscription, Refused> {
        let mut clients = self.lock();
        let position = clients.position.ok_or(Refused::NotReady)?;
        if clients.by_id.len() >= self.max_clients {
            return Err(Refused::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let too_slow = CancellationToken::new();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        clients.by_id.insert(
            id,
            Client {
                frames: tx,
                queued_bytes: Arc::clone(&queued_bytes),
                too_slow: too_slow.clone(),
            },
        );
        Ok(Subscription {
            id,
            position,
            frames: rx,
            queued_bytes,
            too_slow,
        })
    }

    pub fn unsubscribe(&self, id: u64) {
        self.lock().by_id.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `frames`, in order, for every client; drops the clients that cannot take them. Returns how
    /// many clients were dropped for being too slow.
    pub fn publish(&self, frames: &[Arc<Frame>]) -> usize {
        let mut slow = 0;
        let mut clients = self.lock();
        if let Some(last) = frames.last() {
            clients.position = Some(last.stream_id);
        }
        let max_bytes = self.queue_bytes;
        clients.by_id.retain(|_, client| {
            for frame in frames {
                let len = frame.text.len();
                let queued = client.queued_bytes.load(Ordering::Relaxed);
                // One frame larger than the whole budget still goes to a client with nothing waiting:
                // otherwise a single large message would cut off every client.
                if queued > 0 && queued + len > max_bytes {
                    client.too_slow.cancel();
                    slow += 1;
                    return false;
                }
                match client.frames.try_send(Arc::clone(frame)) {
                    Ok(()) => {
                        client.queued_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        client.too_slow.cancel();
                        slow += 1;
                        return false;
                    }
                    // The session has ended; it unsubscribes itself too, whichever comes first.
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        slow
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        // A panic while holding this lock cannot leave the map inconsistent (every operation is one map
        // call), so a poisoned lock is still usable.
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ms: u64) -> Arc<Frame> {
        Arc::new(Frame {
            stream_id: StreamId::new(ms, 0),
            received_at_us: 0,
            text: ByteString::from(format!("{ms}")),
        })
    }

    #[test]
    fn a_client_over_its_queue_is_dropped_and_told_so_while_others_keep_everything() {
        let hub = Hub::new(3, 1 << 20, 10);
        hub.start_at(StreamId::new(0, 0));
        let mut fast = hub.subscribe().unwrap();
        let slow = hub.subscribe().unwrap();
        for ms in 0..3 {
            assert_eq!(hub.publish(&[frame(ms)]), 0);
            assert_eq!(fast.try_recv().unwrap().stream_id.ms, ms);
        }
        assert_eq!(
            hub.publish(&[frame(3)]),
            1,
            "the slow client's fourth frame overflows"
        );
        assert!(slow.too_slow.is_cancelled());
        assert_eq!(fast.try_recv().unwrap().stream_id.ms, 3);
        assert_eq!(hub.len(), 1);
        assert_eq!(
            hub.subscribe().unwrap().position,
            StreamId::new(3, 0),
            "new clients start after the last frame"
        );
    }

    fn sized(ms: u64, bytes: usize) -> Arc<Frame> {
        Arc::new(Frame {
            stream_id: StreamId::new(ms, 0),
            received_at_us: 0,
            text: ByteString::from("x".repeat(bytes)),
        })
    }

    #[test]
    fn a_client_over_its_queue_bytes_is_dropped_though_its_frame_count_is_low() {
        let hub = Hub::new(1000, 10_000, 10);
        hub.start_at(StreamId::new(0, 0));
        let mut reader = hub.subscribe().unwrap();
        let idle = hub.subscribe().unwrap();
        assert_eq!(hub.publish(&[sized(1, 6_000)]), 0);
        assert_eq!(reader.try_recv().unwrap().text.len(), 6_000);
        assert_eq!(
            hub.publish(&[sized(2, 6_000)]),
            1,
            "12,000 bytes waiting for the idle client is over 10,000"
        );
        assert!(idle.too_slow.is_cancelled());
        assert!(
            !reader.too_slow.is_cancelled(),
            "the reader's queue emptied"
        );
        assert_eq!(reader.try_recv().unwrap().text.len(), 6_000);
        assert_eq!(
            hub.publish(&[sized(3, 50_000)]),
            0,
            "one frame over the budget still goes to a client with nothing waiting"
        );
    }

    #[test]
    fn the_connection_cap_refuses_clients() {
        let hub = Hub::new(1, 1 << 20, 2);
        assert_eq!(hub.subscribe().err(), Some(Refused::NotReady));
        hub.start_at(StreamId::new(0, 0));
        let _a = hub.subscribe().unwrap();
        let b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_err());
        hub.unsubscribe(b.id);
        assert!(hub.subscribe().is_ok());
    }
}
