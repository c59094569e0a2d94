//! The fan-out hub: every connected client's bounded queue, and the one place frames are handed out.
//!
//! Each frame is encoded once by the reader and shared by reference count (`ByteString`), so a message to
//! a thousand clients costs a thousand pointer copies, not a thousand encodings. A client whose queue is
//! full (more than `WS_SEND_QUEUE` frames waiting) is dropped from the hub and told to close with 1013;
//! nobody else waits for it, and it cannot make the gateway's memory grow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytestring::ByteString;
use model::StreamId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One encoded `{"type":"message",…}` frame and the stream position it carries.
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream_id: StreamId,
    pub text: ByteString,
}

/// What a client session holds: its queue, and the signal that it fell behind.
pub struct Subscription {
    pub id: u64,
    pub frames: mpsc::Receiver<Frame>,
    /// Cancelled when the client's queue overflowed: the session closes with 1013.
    pub too_slow: CancellationToken,
}

struct Client {
    frames: mpsc::Sender<Frame>,
    too_slow: CancellationToken,
}

pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    queue: usize,
    max_clients: usize,
}

/// The hub is at `MAX_CONNECTIONS`.
#[derive(Debug)]
pub struct Full;

impl Hub {
    pub fn new(queue: usize, max_clients: usize) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue,
            max_clients,
        }
    }

    /// Adds a client. From this moment on, every frame the reader publishes is queued for it.
    pub fn subscribe(&self) -> Result<Subscription, Full> {
        let mut clients = self.lock();
        if clients.len() >= self.max_clients {
            return Err(Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let too_slow = CancellationToken::new();
        clients.insert(
            id,
            Client {
                frames: tx,
                too_slow: too_slow.clone(),
            },
        );
        Ok(Subscription {
            id,
            frames: rx,
            too_slow,
        })
    }

    pub fn unsubscribe(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `frames`, in order, for every client; drops the clients that cannot take them. Returns how
    /// many clients were dropped for being too slow.
    pub fn publish(&self, frames: &[Frame]) -> usize {
        let mut slow = 0;
        self.lock().retain(|_, client| {
            for frame in frames {
                match client.frames.try_send(frame.clone()) {
                    Ok(()) => {}
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
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

    fn frame(ms: u64) -> Frame {
        Frame {
            stream_id: StreamId::new(ms, 0),
            text: ByteString::from(format!("{ms}")),
        }
    }

    #[test]
    fn a_client_over_its_queue_is_dropped_and_told_so_while_others_keep_everything() {
        let hub = Hub::new(3, 10);
        let mut fast = hub.subscribe().unwrap();
        let slow = hub.subscribe().unwrap();
        for ms in 0..3 {
            assert_eq!(hub.publish(&[frame(ms)]), 0);
            assert_eq!(fast.frames.try_recv().unwrap().stream_id.ms, ms);
        }
        assert_eq!(
            hub.publish(&[frame(3)]),
            1,
            "the slow client's fourth frame overflows"
        );
        assert!(slow.too_slow.is_cancelled());
        assert_eq!(fast.frames.try_recv().unwrap().stream_id.ms, 3);
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn the_connection_cap_refuses_clients() {
        let hub = Hub::new(1, 2);
        let _a = hub.subscribe().unwrap();
        let b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_err());
        hub.unsubscribe(b.id);
        assert!(hub.subscribe().is_ok());
    }
}
