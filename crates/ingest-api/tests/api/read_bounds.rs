//! Reads in bounded memory: a large table streamed, stalled readers that hold no connection, pages
//! bounded in bytes.

use testkit::db::{pg, with_connection};
use testkit::procs::{memory_kib, Service};
use testkit::{test_settings, Relay};

use crate::read::{insert_rows, next_link};

/// Reads `/messages` of 100,000 rows (~100 MiB of JSON) from the real ingest-api binary while sampling its
/// resident memory: a server that buffered the response would grow by the body's size.
#[test]
fn reading_100000_rows_streams_in_bounded_memory() {
    let settings = test_settings();
    store::prepare_database(&settings.database_url).unwrap();
    insert_rows(&mut pg(&settings.database_url).unwrap(), 100_000, 1000);
    let ingest = Service::start_program(
        "ingest-api",
        std::path::Path::new(env!("CARGO_BIN_EXE_ingest-api")),
        &testkit::procs::env_for(&settings),
    );
    let pid = ingest.pid();
    let baseline = memory_kib(pid).0;
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            let rss = memory_kib(pid).0;
            peak = peak.max(rss);
            if rss == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peak
    });
    let res = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{}/messages", ingest.url()))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    // Count the array's elements without keeping them: Vec<IgnoredAny> holds zero-sized values.
    let reader = std::io::BufReader::new(res);
    let items: Vec<serde::de::IgnoredAny> = serde_json::from_reader(reader).unwrap();
    assert_eq!(items.len(), 100_000);
    ingest.kill();
    let peak = sampler.join().unwrap();
    testkit::cleanup(&settings);
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "ingest-api RSS: baseline {} KiB, peak {peak} KiB (+{grown_mib} MiB) for ~100 MiB of JSON",
        baseline
    );
    assert!(peak > 0, "the sampler never read the process");
    assert!(
        grown_mib < 32,
        "ingest-api grew by {grown_mib} MiB while streaming ~100 MiB"
    );
}

#[tokio::test]
async fn sixteen_readers_that_never_read_hold_no_connection_a_paged_read_needs() {
    let app = Relay::ingest_only(test_settings()).await;
    // 20,000 rows of 1 KB: far more than a stalled reader's socket buffers hold.
    with_connection(&app.settings, |conn| insert_rows(conn, 20_000, 1_000)).await;
    let addr = &app.ingest_url()["http://".len()..];
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(testkit::raw::Raw::stalled_get(addr, "/messages").await); // and never read
    }
    // Let every stalled response fill its buffers and stop.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        app.get("/messages?limit=10"),
    )
    .await
    .expect("a paged read answered within a second");
    assert_eq!(res.status(), 200);
    let page: Vec<serde_json::Value> = res.json().await.unwrap();
    assert_eq!(page.len(), 10);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    drop(stalled);
}

/// `limit=1000` of 1 MiB messages would be a gibibyte buffered per reader: a page ends at
/// `MAX_PAGE_BYTES` instead (after the message that passes it), and the `Link` chain still walks every
/// message exactly once.
#[tokio::test]
async fn a_page_of_large_messages_ends_at_its_byte_bound_and_the_links_still_walk_every_message() {
    let app = Relay::ingest_only(test_settings()).await;
    with_connection(&app.settings, |conn| insert_rows(conn, 12, 1024 * 1024)).await;
    let first = app.get("/messages?limit=1000").await;
    assert_eq!(first.status(), 200);
    let mut next = next_link(&first);
    let page: Vec<serde_json::Value> = first.json().await.unwrap();
    let max = ingest_api::read::MAX_PAGE_BYTES / (1024 * 1024) + 1;
    assert!(
        page.len() <= max,
        "a page of {} messages of 1 MiB, over its byte bound",
        page.len()
    );
    assert!(next.is_some(), "a short page still names the next one");
    let mut seen: Vec<i64> = page
        .iter()
        .map(|m| m["payload"]["i"].as_i64().unwrap())
        .collect();
    while let Some(path) = next {
        let res = app.get(&path).await;
        next = next_link(&res);
        let page: Vec<serde_json::Value> = res.json().await.unwrap();
        assert!(page.len() <= max);
        seen.extend(page.iter().map(|m| m["payload"]["i"].as_i64().unwrap()));
    }
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());
}
