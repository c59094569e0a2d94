//! The live page: a message posted over HTTP appears, a message sent through the page's own form appears,
//! payloads are shown as text, and after the gateway is stopped, 10 messages are posted and the gateway is
//! started again, all 10 appear once.

use std::time::Duration;

use serde_json::json;

use testkit::{spawn_relay, test_settings, Relay};

use super::webdriver::{open_live_page, wait_until, Browser};

#[tokio::test]
async fn the_live_page_shows_posted_messages_and_resumes_after_a_gateway_restart() {
    let mut relay = spawn_relay(test_settings()).await;
    let Some(browser) = open_live_page(&relay).await else {
        return;
    };
    assert_a_posted_message_is_shown_as_text(&relay, &browser).await;
    assert_a_message_sent_through_the_form_is_shown(&browser).await;
    assert_messages_posted_while_the_gateway_is_down_are_shown_once(&mut relay, &browser).await;
    let cards = browser
        .js(
            "return document.querySelectorAll('li.msg').length",
            json!([]),
        )
        .await;
    assert_eq!(
        cards, 12,
        "1 posted + 1 from the form + 10 during the restart, nothing twice"
    );
    assert_eq!(
        browser
            .js(
                "return document.getElementById('count').textContent",
                json!([])
            )
            .await,
        "12"
    );
    save_a_screenshot(&browser).await;
}

#[tokio::test]
async fn a_payload_with_html_and_a_script_is_shown_as_text_and_never_runs() {
    let relay = spawn_relay(test_settings()).await;
    let Some(browser) = open_live_page(&relay).await else {
        return;
    };
    let attack = "<img src=x onerror=alert(1)>";
    let posted = relay
        .publish(serde_json::to_string(&json!({ "x": attack })).unwrap())
        .await;
    let id = posted["id"].as_str().unwrap().to_owned();
    wait_until("the posted message", Duration::from_secs(10), || async {
        assert!(!browser.alert_open().await, "the payload ran as script");
        browser.cards_with_id(&id).await == 1
    })
    .await;
    // Give a broken page the time to load the image and fire its handler.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!browser.alert_open().await, "the payload ran as script");
    let shown = browser
        .js("const li = document.querySelector(`li[data-id=\"${arguments[0]}\"]`); return [li.querySelector('pre').textContent, document.querySelectorAll('main img').length]", json!([id]))
        .await;
    assert!(
        shown[0].as_str().unwrap().contains(attack),
        "shown as text: {shown}"
    );
    assert_eq!(shown[1], 0, "no element made from the payload");
}

/// Posted over HTTP → on the page, as text: the HTML in it is not markup, the big number is exact.
async fn assert_a_posted_message_is_shown_as_text(relay: &Relay, browser: &Browser) {
    let posted = relay
        .publish(
            r#"{"from":"curl","html":"<b>not bold</b>","big":123456789012345678901234567890}"#
                .into(),
        )
        .await;
    let id = posted["id"].as_str().unwrap().to_owned();
    wait_until("the posted message", Duration::from_secs(10), || async {
        browser.cards_with_id(&id).await == 1
    })
    .await;
    let shown = browser
        .js("const li = document.querySelector(`li[data-id=\"${arguments[0]}\"]`); return [li.querySelector('pre').textContent, li.querySelectorAll('b').length]", json!([id]))
        .await;
    assert!(
        shown[0].as_str().unwrap().contains("\"<b>not bold</b>\""),
        "payload shown as text: {shown}"
    );
    assert!(
        shown[0]
            .as_str()
            .unwrap()
            .contains("123456789012345678901234567890"),
        "exact number: {shown}"
    );
    assert_eq!(shown[1], 0, "no HTML from a payload");
}

/// Sent through the page's own form → accepted by ingest-api (CORS) → on the page.
async fn assert_a_message_sent_through_the_form_is_shown(browser: &Browser) {
    browser
        .js(
            "document.getElementById('payload').value = arguments[0]",
            json!([r#"{"from":"the form"}"#]),
        )
        .await;
    browser.click("#send").await;
    wait_until("the form's message", Duration::from_secs(10), || async {
        browser
            .js("return [...document.querySelectorAll('li pre')].some(p => p.textContent.includes('the form'))", json!([]))
            .await
            == json!(true)
    })
    .await;
}

/// Gateway down: the page notices; 10 messages are posted; gateway up on the same port: all 10, once.
async fn assert_messages_posted_while_the_gateway_is_down_are_shown_once(
    relay: &mut Relay,
    browser: &Browser,
) {
    let port = relay.gateway_port();
    relay.stop_gateway().await;
    wait_until("the page to notice", Duration::from_secs(10), || async {
        browser.status().await != "live"
    })
    .await;
    let during = relay
        .publish_batch(
            &(0..10)
                .map(|i| format!(r#"{{"during_restart":{i}}}"#))
                .collect::<Vec<_>>(),
        )
        .await;
    relay.start_gateway(Some(port)).await;
    for accepted in &during {
        let id = accepted["id"].as_str().unwrap().to_owned();
        wait_until(
            "a message posted while the gateway was down",
            Duration::from_secs(30),
            || async { browser.cards_with_id(&id).await >= 1 },
        )
        .await;
        assert_eq!(browser.cards_with_id(&id).await, 1, "shown exactly once");
    }
}

/// A screenshot of the page (a PNG), kept in the target folder for a person to look at.
async fn save_a_screenshot(browser: &Browser) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
