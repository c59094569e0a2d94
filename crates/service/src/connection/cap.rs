//! How many connections a process holds (`MAX_HTTP_CONNECTIONS`), and what one over the cap is told.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// File descriptors kept free of connections for everything else a service opens (Redis, Postgres,
/// logs, blocking threads).
const RESERVED_FILES: usize = 256;

/// The connection cap when `MAX_HTTP_CONNECTIONS` is 0: what the open-files limit allows at
/// `files_per_connection` descriptors each, less a reserve (and never below 64).
pub fn default_cap(files_per_connection: usize) -> usize {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024);
    (files.saturating_sub(RESERVED_FILES) / files_per_connection.max(1)).max(64)
}

/// How many connections a server holds, shared by its workers.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for one more connection, or `None` at the cap.
    pub fn take(&self) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.open)))
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back when the connection is dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection over the cap is told before it is closed (it is not read: the answer is all it gets).
pub const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 115\r\n\r\n\
{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"over MAX_HTTP_CONNECTIONS; retry later\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_answer_declares_its_own_length() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
