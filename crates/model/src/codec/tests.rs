use super::*;

fn sample() -> StreamEntry {
    StreamEntry {
        id: Uuid::now_v7(),
        channel: ChannelName::default_channel(),
        received_at: crate::message::now_micros(),
        payload: RawValue::from_string(r#"{"z":1,"a":"\u0000","n":1e-300}"#.into()).unwrap(),
        request_id: Some("trace-me-1".into()),
    }
}

fn pairs(fields: &[(&'static str, String)]) -> Vec<(&'static str, Vec<u8>)> {
    fields
        .iter()
        .map(|(k, v)| (*k, v.clone().into_bytes()))
        .collect()
}

#[test]
fn an_entry_round_trips_through_its_fields() {
    let entry = sample();
    let fields = pairs(&entry.to_fields());
    let back = StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
    assert_eq!(back.id, entry.id);
    assert_eq!(back.received_at, entry.received_at);
    assert_eq!(back.payload.get(), entry.payload.get());
    assert_eq!(back.request_id.as_deref(), Some("trace-me-1"));
}

/// The fields of version 1 as the build before `request_id` wrote and read them, frozen here.
const V1_FIELDS: [&str; 4] = ["v", "id", "received_at", "payload"];

#[test]
fn entries_with_and_without_a_request_id_are_read_by_old_and_new_builds() {
    // New writer, old reader: every field an old build requires is there, with `v` still 1, and the
    // old decoder (like this one) skips the field it does not know.
    let entry = sample();
    let fields = pairs(&entry.to_fields());
    for name in V1_FIELDS {
        assert!(fields.iter().any(|(k, _)| *k == name), "{name} missing");
    }
    assert_eq!(fields[0], ("v", b"1".to_vec()));
    let as_old = fields
        .iter()
        .filter(|(k, _)| V1_FIELDS.contains(k))
        .map(|(k, v)| (*k, v.as_slice()));
    assert!(StreamEntry::decode(as_old).is_ok());
    // Old writer, new reader: an entry without the field decodes, with no request id.
    let old = fields
        .iter()
        .filter(|(k, _)| *k != FIELD_REQUEST_ID)
        .map(|(k, v)| (*k, v.as_slice()));
    let back = StreamEntry::decode(old).unwrap();
    assert_eq!(back.id, entry.id);
    assert_eq!(back.request_id, None);
}

#[test]
fn a_newer_version_is_refused_and_unknown_fields_are_ignored() {
    let entry = sample();
    let mut fields = pairs(&entry.to_fields());
    fields.push(("added_later", b"x".to_vec()));
    assert!(StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))).is_ok());
    fields[0].1 = b"3".to_vec();
    assert_eq!(
        StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap_err(),
        DecodeError::UnsupportedVersion(3)
    );
}

/// `default` stays version 1, readable as before by builds from before channels; another channel is
/// version 2, which such a build refuses (and hands back) rather than store it in `default`.
#[test]
fn a_channel_other_than_default_is_version_two_and_default_stays_version_one() {
    let mut entry = sample();
    let fields = pairs(&entry.to_fields());
    assert_eq!(fields[0], ("v", b"1".to_vec()));
    entry.channel = "chat.room1".parse().unwrap();
    let fields = pairs(&entry.to_fields());
    assert_eq!(fields[0], ("v", b"2".to_vec()));
    let back = StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
    assert_eq!(back.channel.as_str(), "chat.room1");
    // An entry from before channels (no `ch`) is `default`'s.
    let old = fields
        .iter()
        .filter(|(k, _)| *k != FIELD_CHANNEL)
        .map(|(k, v)| (*k, v.as_slice()));
    assert_eq!(
        StreamEntry::decode(old).unwrap().channel.as_str(),
        "default"
    );
    // A channel no writer of Relay would write is malformed, not stored somewhere else.
    let bad = fields.iter().map(|(k, v)| {
        if *k == FIELD_CHANNEL {
            (*k, b"no spaces".as_slice())
        } else {
            (*k, v.as_slice())
        }
    });
    assert!(matches!(
        StreamEntry::decode(bad),
        Err(DecodeError::Malformed { field: "ch", .. })
    ));
}

#[test]
fn a_missing_or_broken_field_is_an_error() {
    let entry = sample();
    let fields = pairs(&entry.to_fields());
    let without_payload = fields
        .iter()
        .filter(|(k, _)| *k != FIELD_PAYLOAD)
        .map(|(k, v)| (*k, v.as_slice()));
    assert_eq!(
        StreamEntry::decode(without_payload).unwrap_err(),
        DecodeError::MissingField(FIELD_PAYLOAD)
    );
    let broken = fields.iter().map(|(k, v)| {
        if *k == FIELD_PAYLOAD {
            (*k, b"{oops".as_slice())
        } else {
            (*k, v.as_slice())
        }
    });
    assert!(matches!(
        StreamEntry::decode(broken),
        Err(DecodeError::Malformed {
            field: "payload",
            ..
        })
    ));
}

/// Structured fuzzing on stable Rust (proptest): the decoder sees what Redis could hand it — valid
/// entries, entries with bytes flipped, arbitrary field lists — and must never panic; whatever it
/// accepts must be a well-formed entry. Bounded by the number of cases so it runs in `make test`
/// (`PROPTEST_CASES=100000` for a longer hunt).
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn entry() -> impl Strategy<Value = StreamEntry> {
        (
            any::<u128>(),
            0i64..4_102_444_800_000_000,
            json(),
            any::<bool>(),
            "[a-z.]{1,8}",
        )
            .prop_map(|(id, micros, payload, pretty, channel)| {
                let text = if pretty {
                    serde_json::to_string_pretty(&payload)
                } else {
                    serde_json::to_string(&payload)
                };
                StreamEntry {
                    id: Uuid::from_u128(id),
                    channel: channel
                        .parse()
                        .unwrap_or_else(|_| ChannelName::default_channel()),
                    received_at: DateTime::from_timestamp_micros(micros).unwrap_or_default(),
                    payload: RawValue::from_string(text.unwrap_or_default())
                        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap()),
                    request_id: pretty.then(|| format!("rid-{id}")),
                }
            })
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(FIELD_VERSION.to_owned()),
            Just(FIELD_ID.to_owned()),
            Just(FIELD_RECEIVED_AT.to_owned()),
            Just(FIELD_PAYLOAD.to_owned()),
            Just(FIELD_REQUEST_ID.to_owned()),
            Just(FIELD_CHANNEL.to_owned()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::proptest_cases()))]

        #[test]
        fn every_entry_round_trips_exactly(entry in entry()) {
            let fields = pairs(&entry.to_fields());
            let back = StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
            prop_assert_eq!(back.id, entry.id);
            prop_assert_eq!(back.received_at, entry.received_at);
            prop_assert_eq!(back.payload.get(), entry.payload.get());
        }

        #[test]
        fn a_corrupted_entry_is_refused_or_still_well_formed_never_a_panic(
            entry in entry(),
            field in 0usize..4,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut fields = pairs(&entry.to_fields());
            let value = &mut fields[field].1;
            for (at, byte) in flips {
                if !value.is_empty() {
                    let i = at.index(value.len());
                    value[i] = byte;
                }
            }
            if let Ok(back) = StreamEntry::decode(fields.iter().map(|(k, v)| (*k, v.as_slice()))) {
                prop_assert!(serde_json::from_str::<serde_json::Value>(back.payload.get()).is_ok());
            }
        }

        #[test]
        fn arbitrary_fields_never_panic_the_decoder(
            fields in prop::collection::vec((field_name(), prop::collection::vec(any::<u8>(), 0..64)), 0..8),
        ) {
            let _ = StreamEntry::decode(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
            let _ = EntryParts::decode(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        }
    }
}
