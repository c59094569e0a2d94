//! The replay→live seam, made to happen on purpose: the gateway holds a resuming session at a seam
//! (`push_gateway::test_hooks`), the test puts an entry exactly there, and the client must get it once.

use std::time::Duration;

use push_gateway::test_hooks::Seam;
use testkit::metrics::scrape;
use testkit::{test_settings, Relay};

/// Waits until the gateway's reader has read `n` entries (so they are queued for every subscriber).
async fn reader_has_read(relay: &Relay, n: f64) {
    let url = relay.gateway_url();
    let read = testkit::poll_until(
        Duration::from_secs(10),
        || scrape(&url),
        |m| m.value("relay_gateway_entries_read_total", &[]) >= n,
    )
    .await;
    assert!(read.value("relay_gateway_entries_read_total", &[]) >= n);
}

async fn ids(relay: &Relay, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let accepted = relay.publish(format!("{{\"n\":{i}}}")).await;
        out.push(accepted["id"].as_str().unwrap().to_owned());
    }
    out
}

fn stream_id_of(accepted: &serde_json::Value) -> String {
    accepted["stream_id"].as_str().unwrap().to_owned()
}

/// A resuming client is held at `seam` after `replayed` entries it will get by replay; one entry is put
/// there; the client must get the replayed ones and that one, once each, and then live entries once.
async fn an_entry_put_at(seam: Seam, replayed: usize) {
    let mut relay = Relay::ingest_only(test_settings()).await;
    let gate = relay.start_gateway_held(seam).await;
    let first = relay.publish("{\"n\":0}".into()).await;
    let before = ids(&relay, replayed).await;
    let mut ws = relay
        .ws_connect(&format!("?since={}", stream_id_of(&first)))
        .await;
    tokio::time::timeout(Duration::from_secs(10), gate.reached())
        .await
        .expect("the session reached the seam");
    let at_seam = ids(&relay, 1).await;
    reader_has_read(&relay, (replayed + 2) as f64).await;
    gate.release();
    let got: Vec<String> = ws
        .messages(replayed + 1)
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, [before, at_seam].concat());
    ws.assert_quiet(Duration::from_millis(300)).await;
    let after = ids(&relay, 1).await;
    assert_eq!(ws.messages(1).await[0]["id"], after[0].as_str());
}

/// The replay is over: the entry is only in the queue the session sends from next.
#[tokio::test]
async fn an_entry_that_lands_between_the_replay_and_live_frames_is_sent_exactly_once() {
    an_entry_put_at(Seam::BeforeLive, 2).await;
}

/// Subscribed, not yet replayed: the entry is both in the queue and in what the replay will read.
#[tokio::test]
async fn an_entry_that_lands_between_subscribing_and_the_replay_is_sent_exactly_once() {
    an_entry_put_at(Seam::BeforeReplay, 1).await;
}
