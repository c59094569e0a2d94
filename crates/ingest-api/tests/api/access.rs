//! Who may do what (issue 10): credentials on every endpoint, CORS for browser origins, and the `Host`
//! check that stops DNS rebinding while Relay is open.

use std::time::Duration;

use testkit::raw::Raw;
use testkit::{test_settings, Relay};

use crate::publish::{assert_detail_names, assert_problem};

/// Every endpoint with no key, a wrong key, a key of the wrong scope, and the right key.
#[tokio::test]
async fn the_auth_matrix_holds_for_every_endpoint_with_keys_read_from_a_file() {
    let mut settings = test_settings();
    let path = std::env::temp_dir().join(format!("relay-keys-{}", uuid::Uuid::now_v7()));
    std::fs::write(
        &path,
        "p-key:publish\nr-key:read\ns-key:subscribe\np2-key:publish\n",
    )
    .unwrap();
    settings.api_keys = format!("@{}", path.display()).parse().unwrap();
    std::fs::remove_file(&path).unwrap();
    let app = Relay::ingest_only(settings).await;
    let missing = format!("/messages/{}", uuid::Uuid::now_v7());
    let endpoints: [(&str, &str, &str, u16); 3] = [
        ("POST", "/messages", "p-key", 202),
        ("GET", "/messages", "r-key", 200),
        ("GET", &missing, "r-key", 404),
    ];
    for (method, path, right, ok) in endpoints {
        let send = |key: Option<&str>| {
            let url = format!("{}{path}", app.ingest_url());
            let mut req = match method {
                "POST" => app
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .body("{}"),
                _ => app.client.get(url),
            };
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            req.send()
        };
        let none = send(None).await.unwrap();
        assert_eq!(
            none.headers()["www-authenticate"],
            "Bearer realm=\"relay\"",
            "{method} {path}"
        );
        assert_problem(none, 401).await;
        assert_problem(send(Some("nope")).await.unwrap(), 401).await;
        assert_problem(send(Some("s-key")).await.unwrap(), 403).await;
        assert_eq!(
            send(Some(right)).await.unwrap().status(),
            ok,
            "{method} {path}"
        );
    }
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        assert_eq!(app.get(open).await.status(), 200, "{open} stays open");
    }

    // One Idempotency-Key from two keys: two records, two messages.
    let mut ids = Vec::new();
    for key in ["p-key", "p2-key"] {
        let res = app
            .post()
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("idempotency-key", "shared-key")
            .body(r#"{"same":"body"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        ids.push(res.json::<serde_json::Value>().await.unwrap()["id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(app.stream_len().await, 3);
}

/// With the default `ALLOWED_ORIGINS` (loopback only), a page on any other site gets no CORS grant: it
/// cannot read from or post to a Relay on the visitor's machine. A page on localhost can, and may send
/// its own `X-Request-Id` and read the one Relay answers with.
#[tokio::test]
async fn by_default_only_loopback_origins_get_cors() {
    let app = Relay::ingest_only(test_settings()).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/messages", app.ingest_url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    for origin in ["http://evil.example", "http://localhost.evil.example:8081"] {
        let res = preflight(origin).await.unwrap();
        assert!(
            res.headers().get("access-control-allow-origin").is_none(),
            "{origin} was granted CORS"
        );
    }
    for origin in ["http://localhost:8081", "http://127.0.0.1:3000"] {
        let res = preflight(origin).await.unwrap();
        assert_eq!(res.headers()["access-control-allow-origin"], origin);
    }
    // A page may send its own request id (a trace across its calls) and read the one Relay answers with.
    let res = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/messages", app.ingest_url()),
        )
        .header("origin", "http://localhost:8081")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,idempotency-key,x-request-id",
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-request-id"), "{allowed}");
    let res = app
        .client
        .post(format!("{}/messages", app.ingest_url()))
        .header("origin", "http://localhost:8081")
        .header("content-type", "application/json")
        .header("x-request-id", "page-trace-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "page-trace-1");
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

/// DNS rebinding: a page on rebind.example whose name now points at 127.0.0.1 makes the browser send
/// `Host: rebind.example` to the local Relay. While Relay is open, that is 421 (nothing written);
/// health and metrics answer any Host; `ALLOWED_HOSTS` or credentials lift it.
#[tokio::test]
async fn an_open_relay_answers_421_to_a_host_it_does_not_know() {
    let app = Relay::ingest_only(test_settings()).await;
    let with_host = |method: reqwest::Method, path: &'static str, host: &'static str| {
        app.client
            .request(method, format!("{}{path}", app.ingest_url()))
            .header("host", host)
            .header("content-type", "application/json")
            .body("1")
            .send()
    };
    let refused = with_host(reqwest::Method::POST, "/messages", "rebind.example:8080")
        .await
        .unwrap();
    let problem = assert_problem(refused, 421).await;
    assert_detail_names(&problem, "ALLOWED_HOSTS");
    assert_problem(
        with_host(reqwest::Method::GET, "/messages", "rebind.example")
            .await
            .unwrap(),
        421,
    )
    .await;
    // A Host that is not text is not one the relay knows either (no client library sends one).
    let mut raw = Raw::connect(app.ingest_url().trim_start_matches("http://")).await;
    raw.send(b"POST /messages HTTP/1.1\r\nhost: r\xe9bind.example\r\ncontent-type: application/json\r\ncontent-length: 1\r\nconnection: close\r\n\r\n1")
        .await;
    let answer = raw.answer(Duration::from_secs(5)).await;
    assert_eq!(answer.status, Some(421), "{}", answer.text);
    assert_eq!(app.stream_len().await, 0, "nothing was written");
    for open in ["/healthz", "/readyz", "/metrics"] {
        let res = with_host(reqwest::Method::GET, open, "rebind.example")
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{open}");
    }
    assert_eq!(
        with_host(reqwest::Method::POST, "/messages", "localhost:8080")
            .await
            .unwrap()
            .status(),
        202
    );

    let mut settings = test_settings();
    settings.allowed_hosts = "rebind.example".parse().unwrap();
    let listed = Relay::ingest_only(settings).await;
    let res = listed
        .client
        .get(format!("{}/messages", listed.ingest_url()))
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a host in ALLOWED_HOSTS is served");

    let mut settings = test_settings();
    settings.api_keys = "k:read".parse().unwrap();
    let keyed = Relay::ingest_only(settings).await;
    let res = keyed
        .client
        .get(format!("{}/messages", keyed.ingest_url()))
        .header("host", "rebind.example")
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "with credentials every request carries one: no Host check"
    );
}
