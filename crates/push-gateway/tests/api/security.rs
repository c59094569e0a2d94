//! Issue 10 against push-gateway: ping floods, per-address caps, the page's headers and the `/ws` auth
//! matrix, each performed for real over real sockets, then a well-behaved client is served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use testkit::{test_settings, Relay, Seen};

/// `relay_gateway_connections` as `/metrics` shows it.
async fn connections(relay: &Relay) -> i64 {
    testkit::metrics::scrape(&relay.gateway_url())
        .await
        .value("relay_gateway_connections", &[]) as i64
}

/// A raw socket with a tiny receive buffer, upgraded to a WebSocket by hand.
async fn raw_websocket(addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read exactly the response head, byte by byte, so no frame after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
            .await
            .expect("a handshake answer")
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test]
async fn a_ping_flooding_client_that_never_reads_is_closed_and_its_slot_freed() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1000;
    let relay = Relay::live(settings).await;
    let mut flooder = raw_websocket(&relay.gateway_addr()).await;
    assert_eq!(connections(&relay).await, 1);

    // Masked pings of 125 bytes, as fast as the socket takes them; the pongs are never read.
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let flood: Vec<u8> = ping.repeat(64);
    let started = Instant::now();
    let mut refused_at = None;
    while started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_millis(100), flooder.write_all(&flood)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                refused_at = Some(started.elapsed());
                break;
            }
            // The server has stopped reading from us: keep checking whether it also let go.
            Err(_) => {}
        }
        if connections(&relay).await == 0 {
            refused_at = Some(started.elapsed());
            break;
        }
    }
    let after = refused_at.expect("the flooding client was still connected after 20 s");
    eprintln!("flooder gone after {after:?}");
    assert!(
        after < Duration::from_secs(6),
        "the flooder held its slot for {after:?}"
    );
    let gone =
        testkit::poll_until(Duration::from_secs(3), || connections(&relay), |n| *n == 0).await;
    assert_eq!(gone, 0, "relay_gateway_connections back down");

    // And a well-behaved client is served.
    let mut ws = relay.ws_connect("").await;
    let posted = relay.publish(r#"{"after":"flood"}"#.into()).await;
    assert_eq!(ws.messages(1).await[0]["id"], posted["id"]);
}

/// A client that never reads is closed with 1013 once its queue fills, and its socket is let go at once —
/// not after CLIENT_TIMEOUT_MS of writes that cannot progress — so its slot is free for the next client.
#[tokio::test]
async fn a_client_that_never_reads_is_let_go_as_soon_as_its_session_ends() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 30_000;
    settings.ws_send_queue = 100;
    settings.ws_catch_up_ms = 500;
    let relay = Relay::live(settings).await;
    let _slow = testkit::ws::connect_slow(&relay.gateway_addr(), "").await;
    assert_eq!(connections(&relay).await, 1);
    // 10 MB of 1 KB messages: more than the socket buffers, the handed bytes and the queue hold.
    let pad = "x".repeat(1000);
    for chunk in 0..20 {
        let lines: Vec<String> = (chunk * 500..(chunk + 1) * 500)
            .map(|n| format!(r#"{{"n":{n},"pad":"{pad}"}}"#))
            .collect();
        relay.publish_batch(&lines).await;
    }
    let started = Instant::now();
    let left =
        testkit::poll_until(Duration::from_secs(10), || connections(&relay), |n| *n == 0).await;
    assert_eq!(
        left,
        0,
        "the socket of a client that never reads was still held {:?} after the load",
        started.elapsed()
    );
}

/// A `/ws` upgrade from this host, optionally claiming to forward for `forwarded_for`; the status.
async fn upgrade(relay: &Relay, forwarded_for: Option<&str>) -> Result<testkit::ws::Socket, u16> {
    let mut request = format!("ws://{}/ws", relay.gateway_addr())
        .into_client_request()
        .unwrap();
    if let Some(addr) = forwarded_for {
        request.headers_mut().insert(
            "x-forwarded-for",
            format!("{addr}, 10.9.9.9").parse().unwrap(), // 10.9.9.9: a proxy in front of ours
        );
    }
    testkit::ws::upgrade(request).await
}

#[tokio::test]
async fn one_address_gets_max_connections_per_ip_and_then_429_while_others_connect() {
    let mut settings = test_settings();
    settings.max_connections_per_ip = 2;
    let relay = Relay::live(settings).await;
    let a = upgrade(&relay, None).await.unwrap();
    let _b = upgrade(&relay, Some("203.0.113.7")).await.unwrap();
    assert_eq!(
        upgrade(&relay, Some("203.0.113.8")).await.err(),
        Some(429),
        "X-Forwarded-For from a peer that is not a trusted proxy is ignored"
    );
    drop(a);
    let freed = testkit::poll_until(
        Duration::from_secs(5),
        || async { upgrade(&relay, None).await.is_ok() },
        |ok| *ok,
    )
    .await;
    assert!(freed, "a closed socket's slot is free again");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_cap_is_per_forwarded_address() {
    let mut settings = test_settings();
    settings.max_connections_per_ip = 2;
    // Two proxies in a row: the test's own socket (127.0.0.1) and the one it names as 10.9.9.9.
    settings.trusted_proxies = "127.0.0.1,10.9.9.9".parse().unwrap();
    let relay = Relay::live(settings).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(upgrade(&relay, Some("203.0.113.7")).await.unwrap());
    }
    assert_eq!(upgrade(&relay, Some("203.0.113.7")).await.err(), Some(429));
    // A client writes its own X-Forwarded-For; nginx's `$proxy_add_x_forwarded_for` keeps it on the
    // left of the real address. Believing the leftmost would give it a fresh cap with every header.
    for forged in ["198.51.100.1", "198.51.100.2, 198.51.100.3"] {
        assert_eq!(
            upgrade(&relay, Some(&format!("{forged}, 203.0.113.7")))
                .await
                .err(),
            Some(429),
            "a forged left part ({forged}) is not the client"
        );
    }
    held.push(upgrade(&relay, Some("203.0.113.8")).await.unwrap());
    held.push(upgrade(&relay, None).await.unwrap());
    assert_eq!(connections(&relay).await, 4);
    // The gateway-wide cap still answers 503.
    let mut settings = test_settings();
    settings.max_connections = 1;
    let small = Relay::live(settings).await;
    let _one = upgrade(&small, None).await.unwrap();
    assert_eq!(upgrade(&small, None).await.err(), Some(503));
}

#[tokio::test]
async fn the_page_sends_its_csp_and_no_referrer_and_the_ws_auth_matrix_holds() {
    let mut settings = test_settings();
    settings.api_keys = "sub:subscribe,pub:publish".parse().unwrap();
    let relay = Relay::live(settings).await;
    let gateway = format!("http://{}", relay.gateway_addr());

    let page = relay.get_url(format!("{gateway}/")).await;
    assert_eq!(page.status(), 200, "the page stays open");
    let header = |name: &str| page.headers()[name].to_str().unwrap().to_owned();
    let csp = header("content-security-policy");
    let ingest_origin = relay.ingest_url();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let own = relay.gateway_addr();
    assert!(
        csp.contains(&format!(
            "connect-src 'self' ws://{own} wss://{own} {ingest_origin}"
        )),
        "the page may open its own gateway's WebSocket and post to the ingest API, nothing else: {csp}"
    );
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");

    let ws = |query: &'static str, bearer: Option<&'static str>| {
        let mut req = relay
            .client
            .get(format!("{gateway}/ws{query}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(key) = bearer {
            req = req.bearer_auth(key);
        }
        async move { req.send().await.unwrap() }
    };
    let none = ws("", None).await;
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    assert_eq!(ws("", Some("nope")).await.status(), 401);
    assert_eq!(ws("?access_token=nope", None).await.status(), 401);
    assert_eq!(ws("", Some("pub")).await.status(), 403);
    assert_eq!(ws("?access_token=pub", None).await.status(), 403);
    assert_eq!(ws("", Some("sub")).await.status(), 101);
    assert_eq!(ws("?access_token=sub", None).await.status(), 101);
    for open in ["/healthz", "/readyz", "/metrics", "/app.js", "/style.css"] {
        let res = relay.get_url(format!("{gateway}{open}")).await;
        assert_eq!(res.status(), 200, "{open} stays open");
    }
    let mut client = relay.ws_connect("?access_token=sub").await;
    relay.post_with_key("pub", "application/json", "1").await;
    assert!(matches!(client.next().await, Seen::Frame(_)));
}

#[tokio::test]
async fn many_replays_at_once_all_complete_and_readyz_answers_meanwhile() {
    let relay = Relay::live(test_settings()).await;
    let lines: Vec<String> = (0..1000).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    for chunk in lines.chunks(500) {
        relay.publish_batch(chunk).await;
    }
    // More replays than run at once (16): the rest wait their turn, none is lost.
    let clients = 40;
    let mut sockets = Vec::new();
    for _ in 0..clients {
        sockets.push(relay.ws_connect("?since=0-0").await);
    }
    let readyz = format!("http://{}/readyz", relay.gateway_addr());
    let replays = futures_util::future::join_all(sockets.iter_mut().map(|ws| ws.messages(1000)));
    let probe = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            let res = relay.client.get(&readyz).send().await.unwrap();
            assert_eq!(res.status(), 200);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest
    };
    let (got, slowest) = tokio::join!(replays, probe);
    for messages in got {
        assert_eq!(messages.len(), 1000);
        assert_eq!(messages[999]["payload"]["n"], 999);
    }
    assert!(
        slowest < Duration::from_millis(500),
        "/readyz took {slowest:?} during the replays"
    );
}

/// A replaying socket that never reads, from `forwarded_for` (through the test's own trusted proxy):
/// its replay blocks on the full socket and holds its turn until CLIENT_TIMEOUT_MS.
async fn stalled_replay(relay: &Relay, forwarded_for: &str) -> testkit::ws::Socket {
    let addr = relay.gateway_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let mut request = format!("ws://{addr}/ws?since=0-0")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

/// Replay turns are shared per address: one host's sixteen stalled replays hold at most a quarter of
/// them, and another client's replay starts at once instead of waiting CLIENT_TIMEOUT_MS behind it.
#[tokio::test]
async fn one_address_cannot_hold_every_replay_turn() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 10_000;
    settings.trusted_proxies = "127.0.0.1".parse().unwrap();
    let relay = Relay::live(settings).await;
    // 8 MB of history: far more than a stalled socket's buffers take.
    let pad = "x".repeat(8_000);
    let lines: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"n":{i},"pad":"{pad}"}}"#))
        .collect();
    for chunk in lines.chunks(100) {
        relay.publish_batch(chunk).await;
    }
    let mut hog = Vec::new();
    for _ in 0..16 {
        hog.push(stalled_replay(&relay, "203.0.113.66").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut other = relay.ws_connect("?since=0-0").await;
    let first = other.messages(1).await;
    assert_eq!(first[0]["payload"]["n"], 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "another client's replay waited {:?} behind one address's stalled replays",
        started.elapsed()
    );
    drop(hog);
}

/// The gateway's side of DNS rebinding and foreign pages: with the defaults, `/` and `/ws` under an
/// unknown `Host` get 421, and a WebSocket from a foreign origin 403; the health routes answer any Host.
#[tokio::test]
async fn an_open_gateway_refuses_unknown_hosts_and_foreign_origins() {
    let relay = Relay::live(test_settings()).await;
    let base = format!("http://{}", relay.gateway_addr());
    let page = relay
        .client
        .get(format!("{base}/"))
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 421);
    let health = relay
        .client
        .get(format!("{base}/healthz"))
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let upgrade = |host: &str, origin: &str| {
        let mut request = format!("ws://{}/ws", relay.gateway_addr())
            .into_client_request()
            .unwrap();
        request.headers_mut().insert("host", host.parse().unwrap());
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        status(upgrade("rebind.example", "http://rebind.example").await),
        421
    );
    assert_eq!(
        status(upgrade("127.0.0.1", "http://evil.example").await),
        403
    );
    assert_eq!(
        status(upgrade("127.0.0.1", "http://localhost:8081").await),
        101
    );
}
