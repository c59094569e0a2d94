//! The whole write path: POST → stream → persister → Postgres → GET, byte for byte.

use testkit::{test_settings, Relay};

#[tokio::test]
async fn a_varied_set_round_trips_exactly_in_order_with_the_ids_of_the_202s() {
    let app = Relay::pipeline(test_settings()).await;
    let payloads = [
        r#"{"hello":"world"}"#,
        r#"{"z":1,"a":2,"m":{"nested":[1,2,{"deep":true}]}}"#,
        r#"[1,"two",3.0,null,true,false]"#,
        r#""just a string""#,
        "42",
        "-0.5",
        "null",
        "true",
        r#"{"unicode":"héllo wörld ✓ 日本語","emoji":"🦀🚀👩‍👩‍👧"}"#,
        r#"{"nul":"a\u0000b","escapes":"\"\\\/\b\f\n\r\t","surrogates":"\ud83e\udd80"}"#,
        r#"{"big":123456789012345678901234567890}"#,
        r#"{"tiny":1e-300,"neg":-1.5E+300}"#,
        r#"{"sql":"'; DROP TABLE messages; --","also":"Robert'); DELETE FROM messages;"}"#,
        r#"  {"spaced" :  [ 1 , 2 ] }  "#,
    ];
    let mut accepted = Vec::new();
    for p in payloads {
        let res = app.post_json(p).await;
        assert_eq!(res.status(), 202, "{p}");
        accepted.push(res.json::<serde_json::Value>().await.unwrap());
    }
    let stored = app.wait_for_messages(payloads.len()).await;
    assert_eq!(stored.len(), payloads.len());

    // The raw body: payload text must match what was posted, byte for byte (modulo the outer whitespace
    // that is not part of the JSON value), so compare the JSON text, not re-parsed values.
    let raw = app.get("/messages").await.text().await.unwrap();
    let raw: Vec<model::Message> = serde_json::from_str(&raw).unwrap();
    for ((posted, answer), (message, row)) in
        payloads.iter().zip(&accepted).zip(raw.iter().zip(&stored))
    {
        assert_eq!(message.payload.get(), posted.trim(), "payload changed");
        assert_eq!(row["id"], answer["id"]);
        assert_eq!(row["stream_id"], answer["stream_id"]);
        assert_eq!(row["received_at"], answer["received_at"]);
    }
    let order: Vec<model::StreamId> = raw.iter().map(|m| m.stream_id).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "stream order");
    assert_eq!(app.row_count(), payloads.len() as i64);
}

#[tokio::test]
async fn a_batch_round_trips_in_line_order() {
    let app = Relay::pipeline(test_settings()).await;
    let lines: Vec<String> = (0..500).map(|i| format!("{{\"line\":{i}}}")).collect();
    let res = app.post_ndjson(lines.join("\n")).await;
    assert_eq!(res.status(), 202);
    let accepted: Vec<serde_json::Value> = res.json().await.unwrap();
    let stored = app.wait_for_messages(500).await;
    assert_eq!(stored.len(), 500);
    for (i, (a, s)) in accepted.iter().zip(&stored).enumerate() {
        assert_eq!(a["id"], s["id"]);
        assert_eq!(s["payload"]["line"], i);
    }
}
