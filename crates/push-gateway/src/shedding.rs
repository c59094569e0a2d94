//! Overload: which clients that fell behind are closed (1013, "too slow"), and how many at a time.
//!
//! A client that stays behind for the catch-up window is closed so that it resumes with `since` instead
//! of holding the gateway back. When the *gateway* is past its capacity, though, every client falls behind
//! at about the same moment: closing each as its window ends closed nearly all of them within a second
//! (`make bench`, 1,000 clients at 2,000 msg/s: 938 of 1,000 shed), where closing some would have let the rest keep
//! up. So closes are rationed: each [`STEP`] allows [`SHARE`] of the connected sockets (at least one).
//! A client past its window asks for a close each time it looks; one refused goes on catching up and asks
//! again, so the first to run out of window — those behind the longest — are closed first, a few at a
//! time, and the others stay as soon as the load that is left fits.
//!
//! No client waits for its turn longer than `CLIENT_TIMEOUT_MS`: one blocked writing is closed by it like
//! any silent socket, and one catching up is closed once it has been behind that long, ration or not.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the ration is renewed.
pub(crate) const STEP: Duration = Duration::from_millis(100);
/// The share of connected sockets that may be closed for being too slow in one [`STEP`]: one in 32.
const SHARE: usize = 32;

/// The ration of closes of the current step.
pub struct Shedding {
    step: Mutex<(Instant, usize)>,
}

impl Default for Shedding {
    fn default() -> Self {
        Self {
            step: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl Shedding {
    /// Whether one more too-slow client may be closed now, `connected` sockets being open; counts it.
    pub fn may_close(&self, connected: usize) -> bool {
        self.may_close_at(Instant::now(), connected)
    }

    fn may_close_at(&self, now: Instant, connected: usize) -> bool {
        let mut step = self.step.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(step.0) >= STEP {
            *step = (now, 0);
        }
        if step.1 >= (connected / SHARE).max(1) {
            return false;
        }
        step.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_closes_one_in_thirty_two_of_the_sockets_and_at_least_one() {
        let shedding = Shedding::default();
        let t0 = Instant::now();
        let granted = (0..100).filter(|_| shedding.may_close_at(t0, 1000)).count();
        assert_eq!(granted, 1000 / 32);
        // The next step renews the ration; a few sockets still get one close a step.
        let t1 = t0 + STEP;
        assert!(shedding.may_close_at(t1, 3));
        assert!(!shedding.may_close_at(t1, 3));
        assert!(shedding.may_close_at(t1 + STEP, 3));
    }
}
