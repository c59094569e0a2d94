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

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(addr: &str) -> anyhow::Result<Socket> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    Ok(ws)
}

/// Reads message frames until `expected` arrived or `idle` passes without one; calls `each` with every
/// message frame's text. Returns the number of message frames.
pub async fn read_messages(
    ws: &mut Socket,
    expected: usize,
    idle: std::time::Duration,
    mut each: impl FnMut(&[u8]),
) -> usize {
    let mut n = 0;
    while n < expected {
        match tokio::time::timeout(idle, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_bytes().starts_with(b"{\"type\":\"message\"") {
                    each(t.as_bytes());
                    n += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    n
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
