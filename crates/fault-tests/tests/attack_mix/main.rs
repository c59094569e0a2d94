//! The contract's memory promise, performed on the real binaries: with messages of `MAX_BODY_BYTES`
//! (1 MiB), 16 clients that replay from the start and never read, 16 that page through
//! `GET /messages?limit=1000` and never read, 16 slow WebSockets that stop reading while more 1 MiB
//! messages arrive, and NDJSON batches at the byte limit — all at once — every client gets its first
//! answer, a well-behaved client is served, and every service stays under 512 MiB of resident memory.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::procs::{env_for, memory_kib, with_env, Service};
use testkit::Cleanup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
/// Just under MAX_BODY_BYTES once quoted as a JSON string.
const BIG: usize = MIB - 64;

fn big_message(n: usize) -> String {
    let pad = "x".repeat(BIG - 32);
    format!(r#"{{"n":{n},"pad":"{pad}"}}"#)
}

/// Posts message `n` of 1 MiB, and asserts the 202.
async fn post_big(client: &reqwest::Client, ingest: &Service, n: usize) {
    let res = client
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .body(big_message(n))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// A socket with a 4 KiB receive buffer (its kernel buffers fill at once when it stops reading), from
/// loopback address 127.0.0.`client`: sixteen clients, not one host opening sixteen sockets (which
/// the per-address replay share would rightly serve four at a time).
async fn small_socket(addr: &str, client: u8) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, client], 0)))
        .unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Sends `head` and reads until `wanted` appears in what came back (or 30 s pass); keeps the socket.
async fn first_answer(
    mut stream: tokio::net::TcpStream,
    head: String,
    wanted: &str,
) -> (tokio::net::TcpStream, Result<(), String>) {
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(wanted.len()).any(|w| w == wanted.as_bytes()) {
                    return (stream, Ok(()));
                }
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&seen[..seen.len().min(300)]).into_owned();
    (
        stream,
        Err(format!("{head:?} got no {wanted:?} but: {text:?}")),
    )
}

fn websocket_head(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_messages_through_every_path_at_once_keep_every_service_under_512_mib() {
    let settings = testkit::test_settings();
    let _cleanup = Cleanup(settings.clone());
    testkit::db::prepare_database(&settings).await;
    // Stalled clients stay connected through the measurement (they are cut at CLIENT_TIMEOUT_MS).
    let env = with_env(&env_for(&settings), &[("CLIENT_TIMEOUT_MS", "60000")]);
    // Service::start waits with a blocking client: off the async workers.
    let services = tokio::task::block_in_place(|| {
        [
            Service::start("persister", &env),
            Service::start("ingest-api", &env),
            Service::start("push-gateway", &env),
        ]
    });
    let [persister, ingest, gateway] = &services;
    let client = reqwest::Client::new();

    store_a_backlog_of_big_messages(&client, ingest, &settings).await;
    // Sample every service's resident memory from now on.
    let sampler = PeakSampler::start(&services);
    let held = clients_that_stop_reading_after_their_first_answer(ingest, gateway).await;
    // More 1 MiB messages while the slow sockets do not read: they queue for them, in bytes.
    for n in 2000..2030 {
        post_big(&client, ingest, n).await;
    }
    assert_everyone_else_is_served(&client, ingest, gateway).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let peaks = sampler.finish();
    drop(held);
    assert_each_stayed_under_512_mib(peaks);
    let _ = persister;
}

/// 160 messages of 1 MiB, and two NDJSON batches of 15 lines of 1 MiB (at MAX_BATCH_BYTES), all stored:
/// the history the replaying and paging clients read.
async fn store_a_backlog_of_big_messages(
    client: &reqwest::Client,
    ingest: &Service,
    settings: &service::Settings,
) {
    for n in 0..160 {
        post_big(client, ingest, n).await;
    }
    for b in 0..2 {
        let lines: Vec<String> = (0..15).map(|i| big_message(1000 + b * 100 + i)).collect();
        let res = client
            .post(format!("{}/messages", ingest.url()))
            .header("content-type", "application/x-ndjson")
            .body(lines.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    }
    assert_eq!(testkit::wait_for_rows(settings, 190).await, 190);
}

/// Every service's peak resident memory, sampled on a thread of its own from `start` to `finish`.
struct PeakSampler {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(&'static str, u64)>>,
}

impl PeakSampler {
    fn start(services: &[Service]) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let pids: Vec<(&'static str, u32)> = services.iter().map(|s| (s.name, s.pid())).collect();
        let thread = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut peaks = vec![0u64; pids.len()];
                while !done.load(Ordering::Relaxed) {
                    for (i, (_, pid)) in pids.iter().enumerate() {
                        // VmHWM: the kernel's own peak, so a spike between two samples counts too.
                        peaks[i] = peaks[i].max(memory_kib(*pid).1);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                pids.iter()
                    .map(|(name, _)| *name)
                    .zip(peaks)
                    .collect::<Vec<_>>()
            })
        };
        Self { done, thread }
    }

    /// Each service's name and peak, in KiB.
    fn finish(self) -> Vec<(&'static str, u64)> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// From each of 16 addresses: a page of `GET /messages?limit=1000`, a WebSocket replaying from the start
/// and a live one, each on a small socket that reads only until its first answer arrives. The sockets,
/// kept open and unread.
async fn clients_that_stop_reading_after_their_first_answer(
    ingest: &Service,
    gateway: &Service,
) -> Vec<tokio::net::TcpStream> {
    let ingest_addr = ingest.url().trim_start_matches("http://").to_owned();
    let gateway_addr = gateway.url().trim_start_matches("http://").to_owned();
    let mut clients = Vec::new();
    for i in 0..16u8 {
        let client = 10 + i;
        let page = "GET /messages?limit=1000 HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned();
        clients.push(tokio::spawn(first_answer(
            small_socket(&ingest_addr, client).await,
            page,
            "HTTP/1.1 200",
        )));
        let replay = websocket_head("/ws?since=0-0");
        clients.push(tokio::spawn(first_answer(
            small_socket(&gateway_addr, client).await,
            replay,
            "\"type\":\"message\"",
        )));
        let live = websocket_head("/ws");
        clients.push(tokio::spawn(first_answer(
            small_socket(&gateway_addr, client).await,
            live,
            "\"type\":\"hello\"",
        )));
    }
    let mut held = Vec::new();
    for c in clients {
        let (stream, answered) = c.await.unwrap();
        if let Err(e) = answered {
            panic!("a client got no first answer: {e}");
        }
        held.push(stream);
    }
    held
}

/// While all that is held: both services answer their health check, and a small post is accepted within
/// 2 s.
async fn assert_everyone_else_is_served(
    client: &reqwest::Client,
    ingest: &Service,
    gateway: &Service,
) {
    let started = Instant::now();
    for service in [ingest, gateway] {
        let health = client
            .get(format!("{}/healthz", service.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{}", service.name);
    }
    let small = client
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a small post waited {:?}",
        started.elapsed()
    );
}

/// Prints each service's peak, and asserts it was read and stayed under 512 MiB.
fn assert_each_stayed_under_512_mib(peaks: Vec<(&'static str, u64)>) {
    for (name, kib) in &peaks {
        eprintln!("attack mix: {name} peak RSS {} MiB", kib / 1024);
    }
    for (name, kib) in peaks {
        assert!(kib > 0, "{name}'s memory was never read");
        assert!(
            kib < 512 * 1024,
            "{name} reached {} MiB, over 512 MiB",
            kib / 1024
        );
    }
}
