//! What every push-gateway handler and session shares: built by `startup`, read by the page, the
//! WebSocket admission, sessions, replays and commands. A module of its own so that all of them and the
//! start-up point at it, and none at the start-up.

use std::sync::Arc;

use service::redis::Conn;
use service::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::slots::Slots;
use crate::test_hooks::Seams;

/// Replays running at once. Each holds an `XRANGE` page in memory and works the replay connection; the
/// rest wait (up to `CLIENT_TIMEOUT_MS`) rather than pile onto Redis.
pub use crate::replay_turns::REPLAYS_AT_ONCE;

/// What every handler and session shares.
pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    /// Readiness only: nothing a client asks for can make `/readyz` wait behind it.
    pub redis: Conn,
    /// Replays' own connection (`XINFO`, `XRANGE` pages), apart from readiness and the live reader.
    pub replay_redis: Conn,
    /// Replays of what the stream no longer holds (see `history`): a small pool that connects when
    /// first needed, so the gateway starts and stays ready while Postgres is down.
    pub db: store::PgPool,
    /// At most [`REPLAYS_AT_ONCE`] replays run at once, a quarter of them per client address.
    pub replays: Arc<crate::replay_turns::ReplayTurns>,
    /// `MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_IP`, held by the sockets themselves.
    pub slots: Arc<Slots>,
    /// How many clients that stayed behind may be closed at a time.
    pub shedding: crate::shedding::Shedding,
    pub metrics: Arc<Metrics>,
    /// The rendered live page.
    pub page: String,
    /// Cancelled at shutdown: every session closes with 1001.
    pub stop: CancellationToken,
    /// Every session task: shutdown waits for them to have sent their close frames.
    pub sessions: TaskTracker,
    /// Test hooks at a resuming session's seams (see [`crate::test_hooks`]).
    pub seams: Seams,
}
