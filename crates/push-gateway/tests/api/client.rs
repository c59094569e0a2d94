//! The browser client `/relay.js`: served by the gateway, small, cacheable, and correct by its own tests
//! (`web/relay.test.mjs`: backoff, exactly-once across reconnections, tokens, gaps), run here in Node.

use std::io::Write;

use testkit::{test_settings, Relay};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn the_client_library_passes_its_own_tests_in_node() {
    let out = std::process::Command::new("node")
        .args(["--test", "web/relay.test.mjs"])
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| {
            panic!("the client library's tests need Node.js (`node`, on this machine's image; Debian: apt-get install -y nodejs): {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test web/relay.test.mjs failed:\n{text}"
    );
    assert!(
        text.contains("# fail 0") && !text.contains("# pass 0"),
        "{text}"
    );
}

#[tokio::test]
async fn relay_js_is_served_small_with_an_etag_and_a_long_cache_life() {
    let relay = Relay::live(test_settings()).await;
    let url = format!("http://{}/relay.js", relay.gateway_addr());
    let res = relay.get_url(&url).await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
    assert!(header("content-type").starts_with("text/javascript"));
    assert!(header("cache-control").contains("max-age=86400"));
    let etag = header("etag");
    let body = res.bytes().await.unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&body).unwrap();
    let gzipped = gz.finish().unwrap().len();
    eprintln!("relay.js: {} bytes, {gzipped} gzipped", body.len());
    assert!(
        gzipped <= 5 * 1024,
        "relay.js is {gzipped} bytes gzipped, over 5 KiB"
    );
    let again = relay
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "revalidated by its ETag");
    let types = relay
        .get_url(format!("http://{}/relay.d.ts", relay.gateway_addr()))
        .await;
    assert_eq!(types.status(), 200);
    assert!(types.text().await.unwrap().contains("export class Relay"));
}
