//! The routes as documented: unknown ones are problem 404s, and the OpenAPI document describes (and the
//! `/docs` page renders) every route the service answers.

use testkit::{test_settings, Relay};

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.get("/nope").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_docs_render_it_locally() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_the_contract_is_documented(&doc);
    assert_every_path_is_routed(&app, paths).await;
    // Every example request is accepted with the documented status.
    let sent = send_every_example(&app, paths).await;
    assert!(sent >= 3, "the examples were sent");
    assert_the_docs_page_renders_locally(&app).await;
}

/// The document is collected from the app's own route registrations; the contract's routes, and an
/// example of each schema, are in it.
fn assert_the_contract_is_documented(doc: &serde_json::Value) {
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/messages", "post"),
        ("/messages", "get"),
        ("/messages/{id}", "get"),
        ("/channels/{channel}/messages", "post"),
        ("/channels/{channel}/messages", "get"),
        ("/channels", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    for schema in ["Message", "Accepted", "Problem", "ChannelInfo"] {
        assert!(
            doc["components"]["schemas"][schema]["example"].is_object(),
            "{schema} has an example"
        );
    }
}

/// Every documented path answers (with anything but the catch-all 404).
async fn assert_every_path_is_routed(
    app: &Relay,
    paths: &serde_json::Map<String, serde_json::Value>,
) {
    for path in paths.keys() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{channel}", "chat.room1");
        let res = app.get(&concrete).await;
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("/problems/not-found\""),
            "{path} is documented but not routed"
        );
    }
}

/// Sends every example request body of the document; how many were sent.
async fn send_every_example(
    app: &Relay,
    paths: &serde_json::Map<String, serde_json::Value>,
) -> usize {
    let mut sent = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            let success = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .find(|s| s.starts_with('2'))
                .unwrap()
                .parse::<u16>()
                .unwrap();
            for (content_type, media) in content {
                let examples = examples_of(media);
                assert!(
                    !examples.is_empty(),
                    "{method} {path} {content_type} has an example"
                );
                for example in examples {
                    let status = send_example(app, method, path, content_type, &example).await;
                    assert_eq!(status, success, "{method} {path} {content_type} {example}");
                    sent += 1;
                }
            }
        }
    }
    sent
}

/// A media type's examples: the named ones and the single `example`.
fn examples_of(media: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut examples: Vec<serde_json::Value> = media["examples"]
        .as_object()
        .map(|e| e.values().map(|x| x["value"].clone()).collect())
        .unwrap_or_default();
    examples.extend(media.get("example").cloned());
    examples
}

/// Sends one example body to `path` (a `{channel}` in it filled in); the status it got.
async fn send_example(
    app: &Relay,
    method: &str,
    path: &str,
    content_type: &str,
    example: &serde_json::Value,
) -> u16 {
    let body = match (content_type, example) {
        ("application/json", v) => v.to_string(),
        (_, serde_json::Value::String(text)) => text.clone(),
        (_, v) => v.to_string(),
    };
    let res = app
        .client
        .request(
            method.to_uppercase().parse().unwrap(),
            format!(
                "{}{}",
                app.ingest_url(),
                path.replace("{channel}", "chat.room1")
            ),
        )
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    res.status().as_u16()
}

/// The `/docs` page renders the document and fetches nothing from outside the service.
async fn assert_the_docs_page_renders_locally(app: &Relay) {
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the docs page fetches nothing from outside"
    );
}
