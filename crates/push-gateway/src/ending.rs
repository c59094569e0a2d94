//! How a WebSocket session ends, and the time limits that end it: [`End`] (with or without a close
//! frame), the 1013 for a client too slow to catch up, `CLIENT_TIMEOUT_MS` and the close linger. Shared by
//! the session, its writes, replays and commands, so that none of them imports another for these.

use std::time::Duration;

use actix_ws::{CloseCode, CloseReason};

use crate::state::AppState;

/// Why a session ended: `Some(reason)` when the server should send a close frame.
pub(crate) type End = Option<CloseReason>;

pub(crate) fn close(code: CloseCode, why: &str) -> End {
    Some(CloseReason {
        code,
        description: Some(why.to_owned()),
    })
}

pub(crate) fn too_slow(state: &AppState) -> End {
    state.metrics.slow_clients.inc();
    close(
        CloseCode::Again,
        "too slow: still behind after WS_CATCH_UP_MS; reconnect with since",
    )
}

/// Whether a client past its catch-up window may be closed now: a few at a time (see `shedding`).
pub(crate) fn may_shed(state: &AppState) -> bool {
    state.shedding.may_close(state.slots.len())
}

/// Resolves once a client past its catch-up window may be closed (see `shedding`).
pub(crate) async fn shed_turn(state: &AppState) {
    while !may_shed(state) {
        tokio::time::sleep(crate::shedding::STEP).await;
    }
}

/// `WS_CATCH_UP_MS`, but at most half of `CLIENT_TIMEOUT_MS`, so that a client that stopped reading is
/// told it was too slow before its socket is given up for silent.
pub(crate) fn catch_up_window(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.ws_catch_up_ms).min(client_timeout(state) / 2)
}

/// `CLIENT_TIMEOUT_MS`: how long a client may go without reading (or saying anything) before it is closed.
pub(crate) fn client_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.client_timeout_ms)
}

/// How long a client gets to read a close frame before its socket is shut.
pub(crate) fn close_linger(state: &AppState) -> Duration {
    (client_timeout(state) / 4).min(Duration::from_secs(1))
}
