//! `/relay.js`, the browser client, in real Chromium: subscriptions that resume across a gateway restart.

use std::time::Duration;

use serde_json::{json, Value};

use testkit::{spawn_relay, test_settings, Relay};

use super::webdriver::{open_page, wait_until, Browser};

/// `/relay.js` itself in real Chromium: subscriptions to `chat.*` and `news` on one socket while messages
/// of several channels are posted, the gateway stopped, more posted, the gateway started again: every
/// message of each arrives once, in stream order, to its own subscription only, each subscription's
/// position is the last one it delivered, and every socket the client opened carried both.
#[tokio::test]
async fn the_client_library_resumes_a_pattern_across_a_gateway_restart_exactly_once_in_order() {
    let mut relay = spawn_relay(test_settings()).await;
    let Some(browser) = open_page(&relay).await else {
        return;
    };
    let port = relay.gateway_port();
    subscribe_to_chat_and_news(&browser).await;
    let mut expected = Expected::default();
    post_mixed(&relay, 0..6, &mut expected).await;
    relay.stop_gateway().await;
    post_mixed(&relay, 6..15, &mut expected).await;
    relay.start_gateway(Some(port)).await;
    post_mixed(&relay, 15..18, &mut expected).await;
    assert_each_subscription_got_its_own_once_in_order(&browser, &expected).await;
    assert_every_socket_carried_both_subscriptions(&browser).await;
}

/// Loads `/relay.js` into the page and subscribes to `chat.*` and `news` through one client, whose
/// sockets record their URLs (`window.urls`) and the channels each subscribed to (`window.sent`); the
/// messages go to `window.got`. Returns when both subscriptions have started.
async fn subscribe_to_chat_and_news(browser: &Browser) {
    browser
        .js(
            "window.got = { chat: [], news: [] }; window.urls = []; window.sent = [];
             import('/relay.js').then(({ Relay }) => {
               class Counted extends WebSocket {
                 constructor(url) { super(url); this.n = window.urls.push(url) - 1; window.sent[this.n] = []; }
                 send(text) { window.sent[this.n].push(JSON.parse(text).channel); super.send(text); }
               }
               const relay = new Relay(`ws://${location.host}/ws`, { WebSocket: Counted });
               const keep = (list) => (m) => list.push([m.channel, m.stream_id, m.payload.n]);
               window.sub = relay.subscribe('chat.*', { onMessage: keep(window.got.chat) });
               window.news = relay.subscribe('news', { onMessage: keep(window.got.news) });
               relay.on('state', (s) => { window.state = s; });
             })",
            json!([]),
        )
        .await;
    wait_until(
        "the subscription to open",
        Duration::from_secs(20),
        || async { browser.js("return window.state", json!([])).await == "open" },
    )
    .await;
    // `open` is the socket; the subscriptions start when the gateway answers `subscribed`, which gives
    // each its position.
    wait_until(
        "both subscriptions to start",
        Duration::from_secs(20),
        || async {
            browser
                .js(
                    "return !!(window.sub.position && window.news.position)",
                    json!([]),
                )
                .await
                == true
        },
    )
    .await;
}

/// Waits for every message `expected` holds, then a little longer (a duplicate would come late), and
/// asserts each subscription got exactly its own messages, once, in stream order, and that its position is
/// the last of them.
async fn assert_each_subscription_got_its_own_once_in_order(
    browser: &Browser,
    expected: &Expected,
) {
    let total = expected.chat.len() + expected.news.len();
    wait_until("every message", Duration::from_secs(30), || async {
        browser
            .js(
                "return window.got.chat.length + window.got.news.length",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap() as usize
            >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = browser.js("return window.got", json!([])).await;
    assert_eq!(
        got["chat"],
        json!(expected.chat),
        "each once, in order, only chat.*"
    );
    assert_eq!(
        got["news"],
        json!(expected.news),
        "each once, in order, only news"
    );
    let positions = browser
        .js(
            "return [window.sub.position, window.news.position]",
            json!([]),
        )
        .await;
    assert_eq!(positions[0], expected.chat.last().unwrap()[1]);
    assert_eq!(positions[1], expected.news.last().unwrap()[1]);
}

/// The client reconnected across the restart, each socket opened with no subscription in its URL (the
/// client subscribes by frames), and each socket that opened carried both subscriptions.
async fn assert_every_socket_carried_both_subscriptions(browser: &Browser) {
    let urls = browser.js("return window.urls", json!([])).await;
    let urls = urls.as_array().unwrap();
    assert!(urls.len() >= 2, "it reconnected: {urls:?}");
    for url in urls {
        assert!(
            url.as_str().unwrap().ends_with("/ws?channels="),
            "a socket opened with no subscription, subscribed by frames: {url}"
        );
    }
    // Each socket that opened carried both subscriptions (one that never opened sent nothing).
    let sent = browser.js("return window.sent", json!([])).await;
    let opened: Vec<&Value> = sent
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s != &&json!([]))
        .collect();
    assert!(opened.len() >= 2, "{sent}");
    for frames in opened {
        assert_eq!(
            frames,
            &json!(["chat.*", "news"]),
            "both subscriptions on one socket: {sent}"
        );
    }
}

#[derive(Default)]
struct Expected {
    chat: Vec<Value>,
    news: Vec<Value>,
}

/// Posts `{"n":n}` for each n, to chat.a, news and chat.b in turn; adds what each subscriber should get
/// to `expected`.
async fn post_mixed(relay: &Relay, ns: std::ops::Range<i64>, expected: &mut Expected) {
    for n in ns {
        let channel = ["chat.a", "news", "chat.b"][n as usize % 3];
        let accepted = relay.publish_to(channel, format!(r#"{{"n":{n}}}"#)).await;
        let list = if channel == "news" {
            &mut expected.news
        } else {
            &mut expected.chat
        };
        list.push(json!([channel, accepted["stream_id"], n]));
    }
}
