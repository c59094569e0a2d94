//! A client that speaks HTTP/1.1 by hand over a raw socket, for attacks no polite client library will
//! perform: a body that stalls half-way, a `Content-Length` that lies, a megabyte of header. Every read
//! has a deadline.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw connection.
pub struct Raw {
    pub stream: TcpStream,
}

/// What came back on a raw connection before it closed (or the deadline passed).
#[derive(Debug)]
pub struct Answer {
    /// The status of the first response, if any arrived.
    pub status: Option<u16>,
    /// Everything read.
    pub text: String,
    /// When the server closed the connection, if it did before the deadline.
    pub closed_at: Option<Instant>,
}

impl Raw {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    /// Writes `bytes`; `false` when the server has already closed the connection (a refusal it sent
    /// before reading everything can make the write fail, which is fine).
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Closes the sending half, as a client does that has nothing more to say.
    pub async fn finish(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads until the server closes the connection or `limit` passes.
    pub async fn answer(&mut self, limit: Duration) -> Answer {
        let deadline = Instant::now() + limit;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut closed_at = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed_at = Some(Instant::now());
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        Answer {
            status,
            text,
            closed_at,
        }
    }
}

impl Raw {
    /// A client with a 4 KiB receive buffer (its kernel buffers fill at once) that sends
    /// `GET {path}` to `addr` and then never reads.
    pub async fn stalled_get(addr: &str, path: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("a small receive buffer");
        let mut stream = socket
            .connect(addr.parse().expect("host:port"))
            .await
            .expect("connect");
        let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        Self { stream }
    }

    /// A client with a 4 KiB receive buffer that pipelines `GET {path}` requests to `addr` until the
    /// server stops taking them (its answers fill the buffers between them) or 4 MiB are sent, and
    /// never reads an answer.
    pub async fn pipelining_get(addr: &str, path: &str) -> Self {
        let Self { stream } = Self::stalled_get(addr, path).await;
        let requests = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").repeat(64);
        let mut sent = 0;
        while sent < 4 << 20 {
            match stream.try_write(requests.as_bytes()) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let wait = Duration::from_millis(200);
                    if tokio::time::timeout(wait, stream.writable()).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Self { stream }
    }
}

/// The head of a `POST /messages` with `content_type` that declares `content_length` bytes.
pub fn post_head(content_type: &str, content_length: u64) -> String {
    format!(
        "POST /messages HTTP/1.1\r\nhost: localhost\r\ncontent-type: {content_type}\r\ncontent-length: {content_length}\r\n\r\n"
    )
}
