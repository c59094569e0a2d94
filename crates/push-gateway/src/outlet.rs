//! Every write to a WebSocket client: frames, pings, pongs and closes go through [`send`], which gives up
//! when the client makes no progress reading for `CLIENT_TIMEOUT_MS` (a client that floods pings and never
//! reads cannot park its session in a `pong().await` that never returns), and [`Outlet`] bounds in bytes
//! what is handed to actix-ws and not yet written.

use actix_ws::{CloseCode, Session};

use crate::ending::{catch_up_window, client_timeout, close, shed_turn, too_slow, End};
use crate::hub::Frame;
use crate::hub::Subscription;
use crate::state::AppState;

/// actix-ws's session of one client, and how far the socket has got: actix-ws queues 32 frames
/// whatever their size (32 MiB with 1 MiB messages, pinned per socket), so the gateway hands it a text
/// frame only while what it has handed and the socket has not yet written stays within [`HANDED_BYTES`]
/// (a frame larger than that still goes to a client that has taken everything).
pub(crate) struct Outlet {
    session: Session,
    /// What the connection has written, from `base` on; `None` outside `service::http::serve`.
    written: Option<(service::connection::Written, u64)>,
    /// Bytes of text frames handed to actix-ws.
    handed: u64,
}

impl Outlet {
    pub(crate) fn new(session: Session, written: Option<service::connection::Written>) -> Self {
        Self {
            session,
            written: written.map(|w| {
                let base = w.get();
                (w, base)
            }),
            handed: 0,
        }
    }

    fn has_room(&self, len: usize, limit: usize) -> bool {
        let Some((written, base)) = &self.written else {
            return true;
        };
        let in_flight = self
            .handed
            .saturating_sub(written.get().saturating_sub(*base));
        in_flight == 0 || in_flight + len as u64 <= limit as u64
    }

    /// Waits until a frame of `len` bytes fits (the caller bounds the wait), woken by the connection's
    /// writes. (A 5 ms poll here had capped a replay at 256 KiB per 5 ms: a 1M-message resume left the
    /// machine 40% idle.)
    async fn room_for(&self, len: usize, limit: usize) {
        std::future::poll_fn(|cx| {
            if self.has_room(len, limit) {
                return std::task::Poll::Ready(());
            }
            if let Some((written, _)) = &self.written {
                written.wake_on_write(cx.waker());
            }
            if self.has_room(len, limit) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Bytes of frames handed to actix-ws that the socket has not written yet, per socket (one frame larger
/// than this still goes to a socket that has written everything). actix encodes each socket's frames
/// into a buffer of its own, so this is memory per socket, unlike the hub's queue of shared frames:
/// the 1 MiB attack mix measured 480 MiB of gateway RSS with `WS_SEND_QUEUE_BYTES` (8 MiB) here.
const HANDED_BYTES: usize = 256 * 1024;

/// What the server writes to a client.
pub(crate) enum Out {
    Text(bytestring::ByteString),
    Ping,
    Pong(bytes::Bytes),
}

/// Writes to the client. A client that does not read would hold this forever, so it gives up when the
/// client has been behind for the catch-up window (1013), when the gateway stops, or after
/// `CLIENT_TIMEOUT_MS` without progress. A client that has not read for that long gets no close frame
/// (it would not read that either): the session ends, and the socket with it.
pub(crate) async fn send(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    out: Out,
) -> Result<(), End> {
    let limit = HANDED_BYTES;
    let sent = async {
        match out {
            Out::Text(text) => {
                let len = text.len();
                if !session.has_room(len, limit) {
                    session.room_for(len, limit).await;
                }
                session.session.text(text).await?;
                session.handed += len as u64;
                Ok(())
            }
            Out::Ping => session.session.ping(b"").await,
            Out::Pong(bytes) => session.session.pong(&bytes).await,
        }
    };
    tokio::pin!(sent);
    // Almost always there is room in the session's queue: done without arming any timer.
    if let Some(sent) = futures_util::FutureExt::now_or_never(&mut sent) {
        return sent.map_err(|_| None);
    }
    // The slow path (a full queue) boxed: its timers would otherwise take room in every session's future.
    Box::pin(async {
        tokio::select! {
            biased;
            () = async {
                sub.behind.longer_than(catch_up_window(state)).await;
                shed_turn(state).await;
            } => Err(too_slow(state)),
            () = state.stop.cancelled() => Err(close(CloseCode::Away, "server shutting down")),
            () = tokio::time::sleep(client_timeout(state)) => Err(None),
            sent = &mut sent => sent.map_err(|_| None),
        }
    })
    .await
}

/// Observes how long after its acceptance a message frame was written.
pub(crate) fn delivered(state: &AppState, frame: &Frame) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let delay = (now_us - frame.received_at_us).max(0) as f64 / 1e6;
    state.metrics.delivery_delay.observe(delay);
}
