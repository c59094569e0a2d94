//! Test hooks at the points of a resuming session where a race would hide: after the client is
//! subscribed and before the replay reads the stream, after the replay and before the queued live
//! frames are sent, and inside a replay from Postgres between its two reads. A test takes a [`Gate`] with `Application::gate` before the gateway runs; a session
//! that reaches a held point says so and waits until the test lets it go, so the test can put an entry
//! exactly there. Production never takes a gate: each point then costs one check of an empty cell.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

/// Where a session can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seam {
    /// Subscribed to the hub, the replay not yet begun.
    BeforeReplay,
    /// The replay sent, the live frames not yet.
    BeforeLive,
    /// A replay from Postgres has read the history horizon and not yet its first page (on every try).
    BeforeHistoryPage,
}

/// One held point: the session signals `reached`, then waits for `release`.
#[derive(Debug, Default)]
pub struct Gate {
    reached: Notify,
    release: Notify,
}

impl Gate {
    /// Waits until a session is held here.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held session (or the next one to arrive) go on.
    pub fn release(&self) {
        self.release.notify_one();
    }

    async fn pass(&self) {
        self.reached.notify_one();
        self.release.notified().await;
    }
}

/// The gates a test took; empty in production.
#[derive(Debug, Default)]
pub struct Seams {
    before_replay: OnceLock<Arc<Gate>>,
    before_live: OnceLock<Arc<Gate>>,
    before_history_page: OnceLock<Arc<Gate>>,
}

impl Seams {
    fn cell(&self, seam: Seam) -> &OnceLock<Arc<Gate>> {
        match seam {
            Seam::BeforeReplay => &self.before_replay,
            Seam::BeforeLive => &self.before_live,
            Seam::BeforeHistoryPage => &self.before_history_page,
        }
    }

    /// The gate at `seam` (made on first use).
    pub fn gate(&self, seam: Seam) -> Arc<Gate> {
        Arc::clone(self.cell(seam).get_or_init(Arc::default))
    }

    /// Holds the session at `seam` when a test took that gate.
    pub async fn pass(&self, seam: Seam) {
        if let Some(gate) = self.cell(seam).get() {
            gate.pass().await;
        }
    }
}
