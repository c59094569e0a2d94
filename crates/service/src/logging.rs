//! Logging as every Relay binary does it: `RUST_LOG` (default `info`); `LOG_FORMAT=json` writes one JSON
//! object per line. Lines go to stderr through one writer thread that batches whatever is queued into a
//! single write, so an access-log line per request costs a channel send, not a system call; a flood
//! that outruns stderr drops lines (and says how many) rather than blocking requests.
//!
//! [`throttled`] keeps a repeated error (Redis down: one per request) to one line per cause per
//! interval, with a count of the ones it held back.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Log lines queued for the writer thread at most.
const QUEUE: usize = 16 * 1024;
/// Throttled causes log at most once per this interval.
pub const THROTTLE: Duration = Duration::from_secs(10);

/// What the writer thread is sent: a line, or a request to confirm that everything before it is written.
enum ToWriter {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

struct Batched {
    lines: SyncSender<ToWriter>,
    dropped: Arc<AtomicU64>,
}

/// The writer thread's queue, for [`flush`].
static WRITER: OnceLock<SyncSender<ToWriter>> = OnceLock::new();

/// Waits (up to a second) until every line logged so far is written: before the process exits.
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        let (done, written) = sync_channel(1);
        if writer.send(ToWriter::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(1));
        }
    }
}

impl Write for Batched {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.lines.try_send(ToWriter::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer thread is gone (the process is exiting): write directly.
            Err(TrySendError::Disconnected(ToWriter::Line(line))) => {
                let _ = std::io::stderr().write_all(&line);
            }
            Err(TrySendError::Disconnected(ToWriter::Flush(_))) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_batches(lines: Receiver<ToWriter>, dropped: Arc<AtomicU64>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    while let Ok(first) = lines.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                ToWriter::Line(line) => {
                    let _ = out.write_all(&line);
                }
                ToWriter::Flush(ack) => acks.push(ack),
            }
            next = lines.try_recv().ok();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                out,
                "[relay] {lost} log lines dropped: stderr could not keep up"
            );
        }
        let _ = out.flush();
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Installs the logger (a second call, e.g. several services in one test process, keeps the first).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let (tx, rx) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    builder.target(env_logger::Target::Pipe(Box::new(Batched {
        lines: tx.clone(),
        dropped: Arc::clone(&dropped),
    })));
    if builder.try_init().is_ok() {
        let _ = WRITER.set(tx);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_batches(rx, dropped));
        if let Err(e) = spawned {
            eprintln!("cannot start the log writer thread: {e}");
        }
    }
}

static LAST: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// Whether a line about `cause` should be written now, and how many were held back since the last one:
/// at most one line per cause per [`THROTTLE`].
pub fn throttled(cause: &'static str) -> Option<u64> {
    let now = Instant::now();
    let mut guard = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = guard.get_or_insert_with(HashMap::new);
    match seen.get_mut(cause) {
        Some((at, held)) if now.duration_since(*at) < THROTTLE => {
            *held += 1;
            None
        }
        Some((at, held)) => {
            let count = *held;
            *at = now;
            *held = 0;
            Some(count)
        }
        None => {
            seen.insert(cause, (now, 0));
            Some(0)
        }
    }
}

/// `log::error!` for `cause`, at most once per [`THROTTLE`], with the count held back.
#[macro_export]
macro_rules! error_throttled {
    ($cause:expr, $($arg:tt)+) => {
        if let Some(held) = $crate::logging::throttled($cause) {
            if held > 0 {
                log::error!("{} ({held} more like it in the last {:?})", format_args!($($arg)+), $crate::logging::THROTTLE);
            } else {
                log::error!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cause_logs_once_per_interval() {
        assert_eq!(throttled("test-cause"), Some(0));
        assert_eq!(throttled("test-cause"), None);
        assert_eq!(throttled("test-cause"), None);
        assert_eq!(throttled("other-cause"), Some(0));
    }
}
