//! Connection slots: `MAX_CONNECTIONS` WebSockets per gateway and `MAX_CONNECTIONS_PER_IP` per client
//! address. A slot is taken before the upgrade and handed to the connection itself (its
//! `service::http::ConnectionHeld`), so it is given back when actix drops the socket — not when the session
//! loop ends, which can be earlier (a socket whose close frame is still waiting for a client that does not
//! read). Counting sessions instead of sockets would let one client hold more sockets than its slots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use service::metrics::prometheus::IntGauge;

/// Why a slot was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The gateway is at `MAX_CONNECTIONS`: 503.
    Full,
    /// This address is at `MAX_CONNECTIONS_PER_IP`: 429.
    AddressFull,
}

#[derive(Default)]
struct Taken {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
}

pub struct Slots {
    taken: Mutex<Taken>,
    max: usize,
    per_addr: usize,
    /// `relay_gateway_connections`: sockets holding a slot.
    gauge: IntGauge,
}

/// One socket's slot; given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    addr: Option<IpAddr>,
}

impl Slots {
    pub fn new(max: usize, per_addr: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            taken: Mutex::new(Taken::default()),
            max,
            per_addr,
            gauge,
        })
    }

    /// A slot for a client at `addr` (`None`: not over TCP, only the total applies).
    pub fn take(self: &Arc<Self>, addr: Option<IpAddr>) -> Result<Slot, NoSlot> {
        let mut taken = self.lock();
        if taken.total >= self.max {
            return Err(NoSlot::Full);
        }
        if let Some(addr) = addr {
            let n = taken.by_addr.entry(addr).or_default();
            if *n >= self.per_addr {
                return Err(NoSlot::AddressFull);
            }
            *n += 1;
        }
        taken.total += 1;
        self.gauge.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            addr,
        })
    }

    /// Sockets holding a slot.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // Every change is a couple of integer updates under the lock: a panic cannot leave it half-done.
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.lock();
        taken.total -= 1;
        if let Some(addr) = self.addr {
            if let Some(n) = taken.by_addr.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    // Only addresses with open sockets are kept: the map is bounded by MAX_CONNECTIONS.
                    taken.by_addr.remove(&addr);
                }
            }
        }
        self.slots.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_and_the_per_address_caps_refuse_and_a_dropped_slot_is_free_again() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let slots = Slots::new(3, 2, gauge.clone());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(Some(a)).unwrap();
        let _a2 = slots.take(Some(a)).unwrap();
        assert_eq!(slots.take(Some(a)).err(), Some(NoSlot::AddressFull));
        let _b1 = slots.take(Some(b)).unwrap();
        assert_eq!(slots.take(Some(b)).err(), Some(NoSlot::Full));
        assert_eq!(gauge.get(), 3);
        drop(a1);
        assert_eq!(gauge.get(), 2);
        assert!(slots.take(Some(a)).is_ok());
        assert_eq!(gauge.get(), 2, "the temporary slot was given back");
    }
}
