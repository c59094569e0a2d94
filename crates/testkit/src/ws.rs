//! A WebSocket client for push-gateway tests: every read has a deadline, pings and `hello` are skipped
//! unless asked for.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A raw client socket, for callers that read frames themselves (the benchmark).
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://{addr}/ws{query}` (`addr` is `host:port`, `query` empty or `?…`).
pub async fn connect(
    addr: &str,
    query: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")).await?;
    Ok(ws)
}

/// Opens a WebSocket with `request` (a URL, or a request with headers of its own): the socket, or the
/// HTTP status the upgrade was refused with.
pub async fn upgrade(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<Socket, u16> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("the upgrade failed without an HTTP answer: {e}"),
    }
}

/// Opens `ws://{addr}/ws{query}` over a socket with a 4 KiB receive buffer: a client whose kernel
/// buffers fill at once when it stops reading (a slow client).
pub async fn connect_slow(addr: &str, query: &str) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws{query}"),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    ws
}

pub struct Ws(pub Socket);

/// What a client saw next.
#[derive(Debug)]
pub enum Seen {
    Frame(serde_json::Value),
    Closed(Option<CloseFrame>),
}

impl Ws {
    /// The next text frame or close, skipping pings and `hello`; panics after 10 s of silence.
    pub async fn next(&mut self) -> Seen {
        loop {
            match self.next_any().await {
                Seen::Frame(f) if f["type"] == "hello" => continue,
                seen => return seen,
            }
        }
    }

    /// The next text frame (of any type) or close, skipping pings.
    pub async fn next_any(&mut self) -> Seen {
        // One deadline for the frame, not one per read: the gateway pings every few seconds, and a
        // deadline renewed by each ping would wait forever for a frame that never comes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .expect("no frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Seen::Frame(serde_json::from_str(&t).unwrap())
                }
                Some(Ok(Message::Close(c))) => return Seen::Closed(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    pub async fn frame(&mut self) -> serde_json::Value {
        match self.next().await {
            Seen::Frame(f) => f,
            Seen::Closed(c) => panic!("closed while a frame was expected: {c:?}"),
        }
    }

    /// The next `n` message frames' `data`.
    pub async fn messages(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let f = self.frame().await;
            assert_eq!(f["type"], "message", "{f}");
            out.push(f["data"].clone());
        }
        out
    }

    /// Nothing more arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("unexpected frame: {t}");
        }
    }

    pub async fn close(mut self) {
        let _ = self.0.send(Message::Close(None)).await;
    }
}
