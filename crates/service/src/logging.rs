//! Logging as every Relay binary does it: `RUST_LOG` (default `info`, env_logger's filter syntax);
//! `LOG_FORMAT=json` writes one JSON object per line. The access log (target `access`) writes a line per
//! request, so a line must cost the request path next to nothing:
//! - each thread formats its lines into a buffer of its own ([`Relay::log`]): no lock shared with other
//!   threads, no system call, no wake-up of another thread;
//! - one writer thread takes every thread's buffer every [`WRITE_EVERY`] (swapping it for an empty one)
//!   and writes them to stderr, so a burst of lines is one `write`;
//! - a thread whose buffer holds [`THREAD_BUFFER`] bytes (stderr cannot keep up) drops further lines and
//!   the writer says how many, rather than block requests or grow without bound.
//!
//! Before, env_logger formatted each line under its own lock and sent it over a channel whose receiver
//! slept between lines: a futex wake-up and two context switches per request, 8 µs of a POST's 29 µs of
//! CPU on this machine (perf: `finish_task_switch` and `_raw_spin_unlock_irqrestore` on top).
//!
//! Each line takes a number from one counter as it is buffered, and the writer merges the buffers it
//! takes by those numbers: lines come out in the order they were logged, across threads too.
//!
//! [`throttled`] keeps a repeated error (Redis down: one per request) to one line per cause per
//! interval, with a count of the ones it held back.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the writer thread writes what the threads have logged.
pub const WRITE_EVERY: Duration = Duration::from_millis(10);
/// Bytes of lines one thread holds at most between two writes; past it, lines are dropped (and counted).
pub const THREAD_BUFFER: usize = 1 << 20;
/// A buffer larger than this is not kept for reuse once written: a burst does not pin its peak per thread.
const KEEP_BUFFER: usize = 64 * 1024;
/// Throttled causes log at most once per this interval.
pub const THROTTLE: Duration = Duration::from_secs(10);

/// One thread's lines not yet written: its own, but for the writer's swap every [`WRITE_EVERY`].
type Lines = Arc<Mutex<Vec<u8>>>;

/// Every thread's buffer, for the writer. A buffer whose thread has ended is written and dropped.
static THREADS: Mutex<Vec<Lines>> = Mutex::new(Vec::new());
/// The order of lines across threads: each line takes the next number, and the writer merges the
/// threads' buffers by it.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Lines dropped because a thread's buffer was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether the writer thread runs; until it does (or if it cannot start), lines go straight to stderr.
static WRITING: AtomicBool = AtomicBool::new(false);
/// The writer thread's door, for [`flush`].
static WRITER: OnceLock<SyncSender<SyncSender<()>>> = OnceLock::new();

thread_local! {
    static LINES: Lines = {
        let lines = Lines::default();
        THREADS.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&lines));
        lines
    };
    /// Where this thread formats a line before appending it to [`LINES`].
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The second the text timestamp was last formatted for, and its text (`2026-12-04T08:16:31Z`).
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// Waits (up to a second) until every line logged so far is written: before the process exits.
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        let (done, written) = sync_channel(1);
        if writer.send(done).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// The logger: env_logger's filter (so `RUST_LOG` means what it always meant), Relay's formats and
/// buffers.
struct Relay {
    filter: env_logger::Logger,
    json: bool,
}

impl log::Log for Relay {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        // Formatted before any lock is taken: a value whose `Display` logs (re-entering here) must not
        // find its own thread's buffer locked. The scratch buffer is reused; a re-entered call gets one
        // of its own.
        let reused = SCRATCH.try_with(|scratch| {
            let Ok(mut line) = scratch.try_borrow_mut() else {
                return false;
            };
            line.clear();
            self.format(&mut line, record);
            append(&line);
            if line.capacity() > KEEP_BUFFER {
                *line = Vec::new();
            }
            true
        });
        // Re-entered, or during the thread's teardown: a buffer of its own.
        if reused != Ok(true) {
            let mut line = Vec::new();
            self.format(&mut line, record);
            append(&line);
        }
    }

    fn flush(&self) {
        flush();
    }
}

/// Adds a formatted line to this thread's buffer, or writes it to stderr at once when there is no writer
/// thread (yet), or this thread's buffer is gone (its teardown). In the buffer each line is a record:
/// its place in the process' order of lines ([`SEQUENCE`], 8 bytes), its length (4 bytes), its bytes.
fn append(line: &[u8]) {
    if WRITING.load(Ordering::Relaxed) {
        let buffered = LINES.try_with(|lines| {
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            if lines.len() + RECORD_HEAD + line.len() > THREAD_BUFFER {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            } else {
                let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
                lines.extend_from_slice(&seq.to_le_bytes());
                lines.extend_from_slice(&(line.len() as u32).to_le_bytes());
                lines.extend_from_slice(line);
            }
        });
        if buffered.is_ok() {
            return;
        }
    }
    let _ = std::io::stderr().write_all(line);
}

/// A record's head in a thread's buffer: its sequence number and its length.
const RECORD_HEAD: usize = 8 + 4;

/// The records of `buffer` from `at`: the next one's sequence number and its line.
fn record(buffer: &[u8], at: usize) -> Option<(u64, &[u8])> {
    let head = buffer.get(at..at + RECORD_HEAD)?;
    let seq = u64::from_le_bytes(head[..8].try_into().ok()?);
    let len = u32::from_le_bytes(head[8..].try_into().ok()?) as usize;
    Some((seq, buffer.get(at + RECORD_HEAD..at + RECORD_HEAD + len)?))
}

/// The lines of every buffer in `taken`, merged into the order they were logged in.
fn merge(taken: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut at = vec![0usize; taken.len()];
    loop {
        let next = (0..taken.len())
            .filter_map(|i| record(&taken[i], at[i]).map(|(seq, line)| (seq, i, line)))
            .min_by_key(|(seq, _, _)| *seq);
        let Some((_, i, line)) = next else { return };
        out.extend_from_slice(line);
        at[i] += RECORD_HEAD + line.len();
    }
}

impl Relay {
    fn format(&self, out: &mut Vec<u8>, record: &log::Record<'_>) {
        if self.json {
            json_line(out, record, SystemTime::now());
        } else {
            text_line(out, record, SystemTime::now());
        }
    }
}

/// env_logger's default line: `[2026-12-04T08:16:31Z INFO  access] POST /messages 202 …`.
fn text_line(out: &mut Vec<u8>, record: &log::Record<'_>, now: SystemTime) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let stamp = SECOND.with(|cached| {
        let (second, text) = cached.get();
        if second == secs {
            return text;
        }
        let mut text = [0u8; 20];
        let formatted = chrono::DateTime::from_timestamp(secs as i64, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        text.copy_from_slice(&formatted.as_bytes()[..20]);
        cached.set((secs, text));
        text
    });
    out.push(b'[');
    out.extend_from_slice(&stamp);
    let _ = writeln!(
        out,
        " {:<5} {}] {}",
        record.level(),
        record.target(),
        record.args()
    );
}

/// `LOG_FORMAT=json`: `{"level":…,"msg":…,"target":…,"ts":…}`, the time to the microsecond.
fn json_line(out: &mut Vec<u8>, record: &log::Record<'_>, now: SystemTime) {
    let ts = chrono::DateTime::<chrono::Utc>::from(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = serde_json::json!({
        "ts": ts,
        "level": record.level().as_str(),
        "target": record.target(),
        "msg": record.args().to_string(),
    });
    let _ = writeln!(out, "{line}");
}

/// The writer thread: every [`WRITE_EVERY`], or at once when [`flush`] asks, writes what every thread has
/// buffered.
fn write_batches(flushes: Receiver<SyncSender<()>>) {
    let mut stderr = std::io::stderr();
    // Emptied buffers, handed back to the threads at the next swap.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut taken: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    loop {
        let flushed = match flushes.recv_timeout(WRITE_EVERY) {
            Ok(done) => Some(done),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let threads = THREADS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for lines in &threads {
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            if !lines.is_empty() {
                taken.push(std::mem::replace(
                    &mut *lines,
                    spare.pop().unwrap_or_default(),
                ));
            }
        }
        drop(threads);
        if !taken.is_empty() {
            merge(&taken, &mut out);
            let _ = stderr.write_all(&out);
            out.clear();
            for mut buffer in taken.drain(..) {
                buffer.clear();
                if buffer.capacity() <= KEEP_BUFFER {
                    spare.push(buffer);
                }
            }
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
        }
        // A thread that has ended left its buffer here alone: written above, now dropped.
        THREADS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|lines| {
                Arc::strong_count(lines) > 1
                    || !lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_empty()
            });
        let lost = DROPPED.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                stderr,
                "[relay] {lost} log lines dropped: stderr could not keep up"
            );
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Installs the logger (a second call, e.g. several services in one test process, keeps the first).
pub fn init() {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = filter.filter();
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if log::set_boxed_logger(Box::new(Relay { filter, json })).is_err() {
        return;
    }
    log::set_max_level(max);
    let (door, flushes) = sync_channel(16);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(flushes));
    match spawned {
        Ok(_) => {
            let _ = WRITER.set(door);
            WRITING.store(true, Ordering::Relaxed);
            // A panic writes what was logged before it first: the lines that explain it.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush();
                report(info);
            }));
        }
        Err(e) => eprintln!("cannot start the log writer thread (writing lines directly): {e}"),
    }
}

static LAST: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// Whether a line about `cause` should be written now, and how many were held back since the last one:
/// at most one line per cause per [`THROTTLE`].
pub fn throttled(cause: &'static str) -> Option<u64> {
    let now = Instant::now();
    let mut guard = LAST.lock().unwrap_or_else(PoisonError::into_inner);
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
mod tests;
