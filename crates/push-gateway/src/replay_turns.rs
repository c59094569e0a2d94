//! Turns to replay: at most [`REPLAYS_AT_ONCE`] replays read the stream at once, and one client address
//! holds at most [`REPLAYS_PER_ADDRESS`] of them. Without the second bound one host opening sixteen
//! replaying sockets would make every other client's replay (or catch-up) wait behind its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Replays reading the stream at once, gateway-wide.
pub const REPLAYS_AT_ONCE: usize = 16;
/// Replays one client address runs at once: a quarter of the gateway's.
pub const REPLAYS_PER_ADDRESS: usize = REPLAYS_AT_ONCE / 4;

pub struct ReplayTurns {
    all: Arc<Semaphore>,
    /// One semaphore per address that has a replay running or waiting; removed when the last turn of
    /// an address ends, so the map is as large as the replays in progress.
    addresses: Mutex<HashMap<Option<IpAddr>, Arc<Semaphore>>>,
}

/// A turn to replay, given back on drop.
pub struct Turn {
    _all: OwnedSemaphorePermit,
    address: Option<(Arc<ReplayTurns>, Option<IpAddr>, OwnedSemaphorePermit)>,
}

impl Default for ReplayTurns {
    fn default() -> Self {
        Self {
            all: Arc::new(Semaphore::new(REPLAYS_AT_ONCE)),
            addresses: Mutex::default(),
        }
    }
}

impl ReplayTurns {
    /// A turn for a client at `addr`, waiting at most `wait` (first for its address's turn, then for
    /// the gateway's); `None` when none came in time.
    pub async fn take(self: &Arc<Self>, addr: Option<IpAddr>, wait: Duration) -> Option<Turn> {
        let deadline = tokio::time::Instant::now() + wait;
        let own = Arc::clone(
            self.lock()
                .entry(addr)
                .or_insert_with(|| Arc::new(Semaphore::new(REPLAYS_PER_ADDRESS))),
        );
        let taken = async {
            let mine = tokio::time::timeout_at(deadline, Arc::clone(&own).acquire_owned());
            let mine = mine.await.ok()?.ok()?;
            let all = tokio::time::timeout_at(deadline, Arc::clone(&self.all).acquire_owned());
            Some((mine, all.await.ok()?.ok()?))
        }
        .await;
        drop(own);
        match taken {
            Some((mine, all)) => Some(Turn {
                _all: all,
                address: Some((Arc::clone(self), addr, mine)),
            }),
            None => {
                self.forget_if_idle(addr);
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, Arc<Semaphore>>> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops `addr`'s semaphore when nobody holds or waits for it.
    fn forget_if_idle(&self, addr: Option<IpAddr>) {
        let mut addresses = self.lock();
        if addresses.get(&addr).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.available_permits() == REPLAYS_PER_ADDRESS
        }) {
            addresses.remove(&addr);
        }
    }

    /// Addresses with a replay running or waiting (for tests).
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((turns, addr, permit)) = self.address.take() {
            drop(permit);
            turns.forget_if_idle(addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_gets_a_quarter_of_the_turns_and_is_forgotten_when_done() {
        let turns = Arc::new(ReplayTurns::default());
        let a = Some("203.0.113.1".parse().unwrap());
        let wait = Duration::from_millis(50);
        let mut held = Vec::new();
        for _ in 0..REPLAYS_PER_ADDRESS {
            held.push(turns.take(a, wait).await.expect("a turn"));
        }
        assert!(
            turns.take(a, wait).await.is_none(),
            "over the address's share"
        );
        let b = turns.take(Some("203.0.113.2".parse().unwrap()), wait).await;
        assert!(b.is_some(), "another address is served");
        drop(b);
        assert_eq!(turns.addresses(), 1);
        drop(held);
        assert_eq!(
            turns.addresses(),
            0,
            "no address is kept once its turns end"
        );
        assert_eq!(turns.all.available_permits(), REPLAYS_AT_ONCE);
    }
}
