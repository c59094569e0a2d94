//! A lean WebSocket client pool for the benchmark: frames are not parsed as JSON, only scanned for the
//! two numbers the benchmark embeds in each payload (`"seq":` and `"t":`), so the client costs little
//! next to the gateway it measures.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The integer after `key` (e.g. `"seq":`) in `text`.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The `stream_id` of a message frame.
pub fn stream_id(text: &[u8]) -> Option<model::StreamId> {
    const KEY: &[u8] = b"\"stream_id\":\"";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = text[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&text[at..at + len]).ok()?.parse().ok()
}

pub use testkit::ws::Socket;

/// Opens `ws://{addr}/ws`. A 503 is retried for up to 5 s, as the contract tells clients to: a gateway
/// that has just started answers "not ready" until its reader has reached the stream.
pub async fn connect(addr: &str) -> anyhow::Result<Socket> {
    connect_to(addr, "").await
}

/// [`connect`] with a query (`?channels=…`).
pub async fn connect_to(addr: &str, query: &str) -> anyhow::Result<Socket> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match testkit::ws::connect(addr, query).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res))
                if res.status() == 503 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// How a client's reading ended.
#[derive(Debug, Clone, Copy)]
pub struct ReadEnd {
    /// Message frames read.
    pub frames: usize,
    /// The close code, when the server closed the connection with a close frame.
    pub close_code: Option<u16>,
}

/// Reads message frames until `expected` arrived, the server closes, or `idle` passes without one;
/// calls `each` with every message frame's text.
pub async fn read_messages(
    ws: &mut Socket,
    expected: usize,
    idle: std::time::Duration,
    mut each: impl FnMut(&[u8]),
) -> ReadEnd {
    let mut end = ReadEnd {
        frames: 0,
        close_code: None,
    };
    while end.frames < expected {
        match tokio::time::timeout(idle, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_bytes().starts_with(b"{\"type\":\"message\"") {
                    each(t.as_bytes());
                    end.frames += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                end.close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    end
}

/// Opens `ws://{addr}/ws` from the local address `from` (one of 127.0.0.0/8): a single source address
/// has only ~28,000 ephemeral ports, fewer than the idle-sockets row holds.
pub async fn connect_from(addr: &str, from: std::net::Ipv4Addr) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    let stream = socket.connect(addr.parse()?).await?;
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_found_after_their_key() {
        let frame =
            br#"{"type":"message","data":{"payload":{"seq":42,"t":1700000000000123,"pad":"x"}}}"#;
        assert_eq!(super::number_after(frame, b"\"seq\":"), Some(42));
        assert_eq!(
            super::number_after(frame, b"\"t\":"),
            Some(1_700_000_000_000_123)
        );
        assert_eq!(super::number_after(frame, b"\"nope\":"), None);
    }
}

/// `(stream_id, seq, t)` of a message frame, read at the fixed positions the gateway writes them (the
/// frame layout is `{"type":"message","data":{"id":"<36>","channel":"…","stream_id":"…",
/// "received_at":"<27>","payload":{"seq":…,"t":…`), falling back to a scan. The fan-out client reads a million frames a
/// second on the same two cores as the gateway, so this stays cheap.
pub fn frame_fields(frame: &[u8]) -> (Option<model::StreamId>, Option<u64>, Option<u64>) {
    const HEAD: &[u8] = b"{\"type\":\"message\",\"data\":{\"id\":\"";
    const CHANNEL: &[u8] = b"\",\"channel\":\"";
    const SID: &[u8] = b"\",\"stream_id\":\"";
    const AT: &[u8] = b"\",\"received_at\":\"";
    const PAYLOAD: &[u8] = b"\",\"payload\":{\"seq\":";
    let fast = || -> Option<(model::StreamId, u64, u64)> {
        let rest = frame.strip_prefix(HEAD)?.get(36..)?.strip_prefix(CHANNEL)?;
        let rest = &rest[rest.iter().position(|b| *b == b'"')?..];
        let rest = rest.strip_prefix(SID)?;
        let end = rest.iter().position(|b| *b == b'"')?;
        let stream_id = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        let rest = rest[end..]
            .strip_prefix(AT)?
            .get(27..)?
            .strip_prefix(PAYLOAD)?;
        let (seq, rest) = leading_number(rest)?;
        let (t, _) = leading_number(rest.strip_prefix(b",\"t\":")?)?;
        Some((stream_id, seq, t))
    };
    match fast() {
        Some((sid, seq, t)) => (Some(sid), Some(seq), Some(t)),
        None => (
            stream_id(frame),
            number_after(frame, b"\"seq\":"),
            number_after(frame, b"\"t\":"),
        ),
    }
}

fn leading_number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&text[..digits]).ok()?.parse().ok()?;
    Some((n, &text[digits..]))
}

#[cfg(test)]
mod frame_tests {
    #[test]
    fn frame_fields_are_read_at_their_positions() {
        let frame = br#"{"type":"message","data":{"id":"01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f","channel":"default","stream_id":"1732478400123-7","received_at":"2026-11-24T20:00:00.123456Z","payload":{"seq":42,"t":1700000000000123,"pad":"x"}}}"#;
        let (sid, seq, t) = super::frame_fields(frame);
        assert_eq!(sid, Some(model::StreamId::new(1_732_478_400_123, 7)));
        assert_eq!((seq, t), (Some(42), Some(1_700_000_000_000_123)));
    }
}
