//! Every accepted TCP connection, before actix sees it: the cap on how many a process holds
//! (`MAX_HTTP_CONNECTIONS`) and the deadlines that actix-http leaves out.
//!
//! actix-http times the *first* request head of a connection and idle keep-alive, nothing else: the head
//! of a later request on a kept-alive connection, and a response the client never reads, can hold the
//! socket (and the response's buffers) forever. So each socket is wrapped in a [`Guarded`] stream that
//! watches progress in both directions, whatever the HTTP state:
//!
//! - **Reading.** Once the client has sent bytes that the server has not answered yet (any write ends the
//!   wait), more must come within `CLIENT_TIMEOUT_MS` of the last, and all of it within
//!   `CLIENT_TIMEOUT_MS` plus one second per [`MIN_CLIENT_RATE`] bytes received: a request head or
//!   body trickled a byte at a time runs out of time however steadily it trickles, and a large body sent
//!   at a reasonable rate is never cut off. Both get a grace of `min(CLIENT_TIMEOUT_MS / 4, 1 s)`, so
//!   that a handler's own deadline for its body (ingest-api's, which answers 408) comes first.
//! - **Writing.** A write the socket cannot take (the client's window is full) must make progress within
//!   `CLIENT_TIMEOUT_MS`: a client that stops reading is disconnected, whatever the server still wanted
//!   to send it.
//! - **Spinning.** A connection that actix polls [`SPIN_POLLS`] times within [`SPIN_WINDOW`] without
//!   once trying to read is closed: actix-http 3.20's h1 dispatcher wakes itself, and reads nothing,
//!   while its read buffer holds 128 KiB of requests it cannot answer yet (`read_available`), so a client
//!   that pipelines requests and does not read the answers kept a core busy until `CLIENT_TIMEOUT_MS`
//!   (perf: 16 such connections held both cores of an otherwise idle ingest-api), or for as long as it
//!   read a little now and then. Every poll that does not spin tries a read first.
//!
//! A deadline that passes fails the read or write with `TimedOut`, and actix drops the connection and
//! everything it held for it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

mod cap;
pub use cap::{default_cap, ConnectionCap, Slot, FULL_RESPONSE};

/// The slowest rate, in bytes per second, at which a client may send a request once it has started:
/// a 1 MiB body may take `CLIENT_TIMEOUT_MS` + 16 s, a 16 MiB batch `CLIENT_TIMEOUT_MS` + 256 s.
pub const MIN_CLIENT_RATE: u64 = 64 * 1024;

/// Writes that waited, and flushes, with no read tried between them, within [`SPIN_WINDOW`], past which a
/// connection is spinning: a connection that does not spin tries a read at every poll, or (when its client
/// has closed its sending half) is polled for a response chunk or a writable socket, a few thousand times a
/// second at most; a spinning one, tens of thousands.
pub const SPIN_POLLS: u32 = 1000;
/// See [`SPIN_POLLS`].
pub const SPIN_WINDOW: Duration = Duration::from_millis(100);

/// Bytes a connection has written to its socket, shared with whoever watches its progress (the
/// gateway, to bound what it has handed to actix but the client has not taken yet), and a waker for one
/// watcher that waits for more to be written.
#[derive(Debug, Clone, Default)]
pub struct Written(Arc<WrittenState>);

#[derive(Debug, Default)]
struct WrittenState {
    bytes: std::sync::atomic::AtomicU64,
    watcher: futures_util::task::AtomicWaker,
}

impl Written {
    pub fn get(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Wakes `waker` at the next write (one watcher per connection: a second registration replaces the
    /// first). Check the count again after registering, as the write may have come in between.
    pub fn wake_on_write(&self, waker: &std::task::Waker) {
        self.0.watcher.register(waker);
    }

    fn add(&self, n: u64) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
        self.0.watcher.wake();
    }
}

/// Ends a connection from outside its I/O: once [`Closer::close`] is called, the connection's next read
/// or write fails (its task is woken for it), and actix drops the connection and its socket. For a
/// WebSocket whose client stopped reading, which actix alone would keep flushing to forever. It holds no
/// descriptor of its own (a duplicated descriptor per socket had halved the sockets a file limit holds),
/// and it can never close another connection's socket: it acts only through this connection's stream.
#[derive(Debug, Clone, Default)]
pub struct Closer(Arc<CloserState>);

#[derive(Debug, Default)]
struct CloserState {
    closed: std::sync::atomic::AtomicBool,
    /// The connection task's waker, registered whenever a read or write waits.
    waker: futures_util::task::AtomicWaker,
}

impl Closer {
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    fn closed(&self) -> io::Result<()> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the server",
            ));
        }
        Ok(())
    }

    /// Registers the waiting task, then checks again: a close between the first check and the
    /// registration is not missed.
    fn wait(&self, cx: &Context<'_>) -> io::Result<()> {
        self.0.waker.register(cx.waker());
        self.closed()
    }
}

/// A TCP stream with the deadlines of the module's header.
pub struct Guarded {
    io: TcpStream,
    timeout: Duration,
    /// When the client started sending what the server has not answered yet, how much of it, and when
    /// the last of it came.
    unanswered_since: Option<Instant>,
    last_read: Instant,
    unanswered_bytes: u64,
    /// When a write last found the socket full with nothing written since.
    write_stalled_since: Option<Instant>,
    /// Writes that waited, and flushes, since the last read tried; and when the count reached a tenth
    /// of [`SPIN_POLLS`] (the clock is read only then).
    unread_polls: u32,
    unread_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    written: Written,
    closer: Closer,
    _slot: Slot,
}

impl Guarded {
    pub fn new(io: TcpStream, timeout: Duration, slot: Slot) -> Self {
        Self {
            io,
            timeout,
            unanswered_since: None,
            last_read: Instant::now(),
            unanswered_bytes: 0,
            write_stalled_since: None,
            unread_polls: 0,
            unread_since: None,
            timer: Box::pin(tokio::time::sleep(timeout)),
            written: Written::default(),
            closer: Closer::default(),
            _slot: slot,
        }
    }

    /// What the connection has written so far.
    pub fn written(&self) -> Written {
        self.written.clone()
    }

    /// What ends this connection from outside.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// The socket itself (to set options on).
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    fn read_deadline(&self) -> Option<Instant> {
        let since = self.unanswered_since?;
        let whole =
            since + self.timeout + Duration::from_secs(self.unanswered_bytes / MIN_CLIENT_RATE);
        let grace = (self.timeout / 4).min(Duration::from_secs(1));
        Some(whole.min(self.last_read + self.timeout) + grace)
    }

    /// Counts a write that waited, or a flush, with no read tried since the last; `Err` once there have
    /// been [`SPIN_POLLS`] of them within [`SPIN_WINDOW`].
    fn unread_poll(&mut self) -> io::Result<()> {
        self.unread_polls += 1;
        if self.unread_polls == SPIN_POLLS / 10 {
            self.unread_since = Some(Instant::now());
        } else if self.unread_polls >= SPIN_POLLS {
            if self
                .unread_since
                .is_some_and(|t| t.elapsed() <= SPIN_WINDOW)
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection spins: polled without a read, its requests unanswered (a client \
                     that pipelines requests and does not read the answers)",
                ));
            }
            // Slower than a spin: count again from here.
            self.unread_polls = SPIN_POLLS / 10;
            self.unread_since = Some(Instant::now());
        }
        Ok(())
    }

    fn write_deadline(&self) -> Option<Instant> {
        Some(self.write_stalled_since? + self.timeout)
    }

    /// `Err` when `deadline` has passed; otherwise arms the timer at the earliest deadline in force, so
    /// the connection's task is polled again when one passes.
    fn check(
        &mut self,
        deadline: Option<Instant>,
        cx: &mut Context<'_>,
        what: &str,
    ) -> io::Result<()> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client made no progress {what} within CLIENT_TIMEOUT_MS"),
            )
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
        let next = match (self.read_deadline(), self.write_deadline()) {
            (Some(r), Some(w)) => r.min(w),
            (one, other) => match one.or(other) {
                Some(d) => d,
                None => return Ok(()),
            },
        };
        if self.timer.deadline() != next {
            self.timer.as_mut().reset(next);
        }
        // Registers the waker; whichever deadline passed is failed on the next poll of its side.
        let _ = self.timer.as_mut().poll(cx);
        Ok(())
    }
}

use std::future::Future as _;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.closer.closed()?;
        this.unread_polls = 0;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    this.last_read = Instant::now();
                    this.unanswered_since.get_or_insert(this.last_read);
                    this.unanswered_bytes += n;
                }
                // A trickle is checked here too: bytes that keep coming do not move the deadline on.
                match this.read_deadline() {
                    Some(deadline) if Instant::now() >= deadline => Poll::Ready(Err(
                        io::Error::new(io::ErrorKind::TimedOut, "request sent too slowly"),
                    )),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.closer.wait(cx)?;
                let deadline = this.read_deadline();
                match this.check(deadline, cx, "sending its request") {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.closer.closed()?;
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.written.add(n as u64);
                    this.write_stalled_since = None;
                    this.unanswered_since = None;
                    this.unanswered_bytes = 0;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.closer.wait(cx)?;
                this.write_stalled_since.get_or_insert_with(Instant::now);
                this.unread_poll()?;
                let deadline = this.write_deadline();
                match this.check(deadline, cx, "reading its response") {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.unread_poll()?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One path for the bookkeeping: the first non-empty buffer.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.as_mut().poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
