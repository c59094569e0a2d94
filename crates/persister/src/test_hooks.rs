//! A test-only hook at the two moments of a batch where a crash is worst, so that a fault test can
//! SIGKILL the real binary exactly there rather than at a random moment:
//! - `before-commit`: the batch is read (pending on this consumer), nothing of it committed;
//! - `after-commit`: the batch is committed, not yet acknowledged — its entries are stored *and* still
//!   pending, so whoever delivers them next must not store them twice.
//!
//! `PERSISTER_TEST_SEAM=<moment>` in the environment arms it: the first batch with rows that reaches that
//! moment logs [`MARKER`] and the moment's name, then is held until the persister is stopped (a SIGTERM
//! then ends the run with the batch unacknowledged; a test is expected to SIGKILL it). It fires once per
//! process. It is not a setting: nothing in production sets it, and unset it costs one check of an
//! `Option` per batch.

use tokio_util::sync::CancellationToken;

/// The environment variable that arms the hook (test only).
pub const ENV: &str = "PERSISTER_TEST_SEAM";
/// The log line a held batch writes, followed by the moment's name.
pub const MARKER: &str = "test seam reached:";

/// Where a batch can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seam {
    /// Read, not committed.
    BeforeCommit,
    /// Committed, not acknowledged.
    AfterCommit,
}

impl Seam {
    fn name(self) -> &'static str {
        match self {
            Self::BeforeCommit => "before-commit",
            Self::AfterCommit => "after-commit",
        }
    }

    /// The seam `PERSISTER_TEST_SEAM` arms, if any; an unknown value fails the start.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(ENV) {
            Err(_) => Ok(None),
            Ok(v) if v == "before-commit" => Ok(Some(Self::BeforeCommit)),
            Ok(v) if v == "after-commit" => Ok(Some(Self::AfterCommit)),
            Ok(v) => {
                anyhow::bail!("invalid {ENV}={v:?} (before-commit or after-commit; test only)")
            }
        }
    }
}

/// The armed seam of one process, disarmed once it fired (by whichever batch reaches it first).
#[derive(Debug, Default)]
pub struct Armed {
    seam: Option<Seam>,
    fired: std::sync::atomic::AtomicBool,
}

impl Armed {
    pub fn new(seam: Option<Seam>) -> Self {
        Self {
            seam,
            fired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// At `here` with `entries` in hand: when armed for it, says so and waits until `stop`. Returns
    /// whether it held (the caller then leaves the batch unacknowledged).
    pub async fn pass(&self, here: Seam, entries: usize, stop: &CancellationToken) -> bool {
        if self.seam != Some(here) || self.fired.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        log::warn!("{MARKER} {} ({entries} entries held)", here.name());
        stop.cancelled().await;
        true
    }
}
