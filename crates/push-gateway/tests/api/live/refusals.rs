//! The WebSocket handshakes the gateway refuses: a bad `since`, a foreign origin, a missing or wrong
//! key, and one connection over `MAX_CONNECTIONS`.

use testkit::{test_settings, Relay, Seen};

#[tokio::test]
async fn refusals_bad_since_foreign_origin_missing_key_and_the_connection_cap() {
    let mut settings = test_settings();
    settings.allowed_origins = "http://allowed.example".parse().unwrap();
    settings.api_keys = "sub:subscribe,pub:publish".parse().unwrap();
    settings.max_connections = 1;
    let relay = Relay::live(settings).await;
    let base = format!("http://{}/ws", relay.gateway_addr());
    let handshake = |url: String, origin: Option<&'static str>| {
        let mut req = relay
            .client
            .get(url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap() }
    };
    assert_eq!(handshake(base.clone(), None).await.status(), 401);
    assert_eq!(
        handshake(format!("{base}?access_token=pub"), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        handshake(format!("{base}?access_token=sub&since=nope"), None)
            .await
            .status(),
        400
    );
    let foreign = handshake(
        format!("{base}?access_token=sub"),
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        foreign.headers()["content-type"],
        "application/problem+json"
    );

    let mut first = relay.ws_connect("?access_token=sub").await;
    let refused = handshake(
        format!("{base}?access_token=sub"),
        Some("http://allowed.example"),
    )
    .await;
    assert_eq!(refused.status(), 503, "over MAX_CONNECTIONS");
    let posted = relay.post_with_key("pub", "application/json", "1").await;
    assert_eq!(posted.status(), 202);
    assert!(matches!(first.next().await, Seen::Frame(_)));
    assert_eq!(
        relay
            .get_url(format!("http://{}/healthz", relay.gateway_addr()))
            .await
            .status(),
        200
    );
}
