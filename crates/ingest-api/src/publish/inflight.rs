//! ingest-api's budget of request body bytes held at once (`MAX_INFLIGHT_BYTES`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Request body bytes a process holds at once (`MAX_INFLIGHT_BYTES`): each request reserves what it has
/// read so far and gives it back when its [`Reservation`] drops, so a thousand slow bodies cannot add up to
/// more memory than the operator allowed.
#[derive(Debug)]
pub struct InflightBytes {
    used: AtomicUsize,
    limit: usize,
}

impl InflightBytes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            pool: Arc::clone(self),
            held: 0,
        }
    }
}

/// Bytes one request holds of an [`InflightBytes`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<InflightBytes>,
    held: usize,
}

impl Reservation {
    /// Takes `n` more bytes, or `false` (and nothing) when that would go over the limit.
    pub fn grow(&mut self, n: usize) -> bool {
        let taken = self
            .pool
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n)
                    .filter(|&total| total <= self.pool.limit)
            });
        if taken.is_ok() {
            self.held += n;
        }
        taken.is_ok()
    }
}

impl Reservation {
    /// Grows the reservation to `total` bytes (nothing when it holds that much already), or `false`.
    pub fn grow_to(&mut self, total: usize) -> bool {
        total <= self.held || self.grow(total - self.held)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_give_back_on_drop() {
        let pool = InflightBytes::new(100);
        let mut a = pool.reservation();
        assert!(a.grow(60));
        let mut b = pool.reservation();
        assert!(!b.grow(41), "60 + 41 is over 100");
        assert!(b.grow(40));
        assert_eq!(pool.used(), 100);
        drop(a);
        assert_eq!(pool.used(), 40);
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
