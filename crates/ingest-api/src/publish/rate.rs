//! `PUBLISH_RATE`: messages per second per API key (per client address when Relay runs open), with a
//! burst of one second's worth, on `governor`'s keyed GCRA limiter. A batch takes one cell per line, all
//! or none, so a refused batch is refused whole and nothing of it is written.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Whose budget a publish spends: the API key's identity, or the client address when there are no keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Publisher {
    Key(String),
    Addr(IpAddr),
    /// No key and no address (not served over TCP): one shared budget.
    Unknown,
}

pub struct PublishRate {
    limiter: DefaultKeyedRateLimiter<Publisher>,
    burst: NonZeroU32,
}

impl PublishRate {
    /// `None` for `PUBLISH_RATE=0` (unlimited): the publish path then pays nothing at all.
    pub fn new(per_second: u32) -> Option<Self> {
        let burst = NonZeroU32::new(per_second)?;
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(burst).allow_burst(burst)),
            burst,
        })
    }

    /// Takes `messages` from `who`'s budget, or says how long to wait before the same request could pass.
    pub fn check(&self, who: &Publisher, messages: usize) -> Result<(), Duration> {
        let n = u32::try_from(messages)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(who, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // More lines than one second's burst: no wait makes this batch pass; say "a second", and the
            // detail tells the client to split it.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// The largest batch that can ever pass.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Forgets publishers whose budget is full again, so the table holds only recent ones (one entry per
    /// address seen in the last second, not every address ever seen).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_seconds_worth_passes_and_the_next_message_waits_while_others_do_not() {
        let rate = PublishRate::new(10).unwrap();
        let a = Publisher::Key("a".into());
        let b = Publisher::Key("b".into());
        assert!(rate.check(&a, 4).is_ok());
        assert!(rate.check(&a, 6).is_ok());
        let wait = rate.check(&a, 1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(rate.check(&b, 10).is_ok(), "another key has its own budget");
        assert!(
            rate.check(&b, 11).is_err(),
            "more than the burst never passes"
        );
        assert!(PublishRate::new(0).is_none());
    }
}
