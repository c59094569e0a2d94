//! The stream-entry codec: how one accepted message is laid out as the field/value pairs of a Redis
//! Stream entry.
//!
//! Every entry carries a version field ([`FIELD_VERSION`]). A decoder accepts every version up to the one
//! it knows and refuses newer ones, so during a rolling deploy new services read old entries, and an old
//! persister hands a newer entry back (it stays pending and is claimed by an upgraded replica) instead of
//! storing something it does not understand.
//!
//! A field added without changing what the others mean keeps the version: decoders ignore fields they do
//! not know, so a reader of the previous build reads a new entry unchanged. `request_id` came that way —
//! `v` stays 1, old persisters and gateways read entries that carry it, and new ones read entries that do
//! not. Only a change that an old reader would misread (a field's meaning or format) bumps `v`.
//!
//! `ch`, the channel, is such a change for every channel but `default`: a reader of version 1 would take
//! the message for one of `default`. So an entry of `default` is written as version 1 (with `ch`, which
//! version-1 readers skip), and an entry of any other channel as version 2, which a version-1 reader
//! hands back (it stays pending until an upgraded replica claims it) instead of storing it wrongly.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::channel::ChannelName;
use crate::format_received_at;

/// The newest version this build writes and reads (2: entries of a channel other than `default`).
pub const ENTRY_VERSION: u32 = 2;
/// The version of an entry of `default`, which readers from before channels store right.
pub const DEFAULT_CHANNEL_VERSION: u32 = 1;
/// How many field/value pairs [`StreamEntry::to_fields`] writes.
pub const FIELD_COUNT: usize = 6;

/// Field: entry format version, a decimal integer.
pub const FIELD_VERSION: &str = "v";
/// Field: the message id, a UUIDv7 in its hyphenated form.
pub const FIELD_ID: &str = "id";
/// Field: when ingest-api accepted the message, RFC 3339 with microseconds.
pub const FIELD_RECEIVED_AT: &str = "received_at";
/// Field: the client's JSON text, unchanged.
pub const FIELD_PAYLOAD: &str = "payload";
/// Field (optional): the request id of the `POST` that carried the message, for following it through the
/// logs of every service. Empty or absent when the writer had none.
pub const FIELD_REQUEST_ID: &str = "rid";
/// Field: the channel the message was published to; absent in entries from before channels (`default`).
pub const FIELD_CHANNEL: &str = "ch";

/// The content of one stream entry (its stream id is the entry's key, not part of the content).
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: Uuid,
    pub channel: ChannelName,
    pub received_at: DateTime<Utc>,
    pub payload: Box<RawValue>,
    pub request_id: Option<String>,
}

/// An entry's content with the payload as unchecked text: for a consumer that validates it anyway (the
/// persister: Postgres' `json` type checks the syntax on insert), so it is not parsed twice.
#[derive(Debug, Clone)]
pub struct EntryParts {
    pub id: Uuid,
    pub channel: ChannelName,
    pub received_at: DateTime<Utc>,
    pub payload: String,
    pub request_id: Option<String>,
}

impl From<StreamEntry> for EntryParts {
    fn from(e: StreamEntry) -> Self {
        Self {
            id: e.id,
            channel: e.channel,
            received_at: e.received_at,
            payload: e.payload.get().to_owned(),
            request_id: e.request_id,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("entry has no `{0}` field")]
    MissingField(&'static str),
    #[error("entry version {0} is newer than this build understands ({ENTRY_VERSION})")]
    UnsupportedVersion(u32),
    #[error("entry field `{field}` is malformed: {reason}")]
    Malformed { field: &'static str, reason: String },
}

impl StreamEntry {
    /// The field/value pairs to pass to `XADD`, in a fixed order (always [`FIELD_COUNT`] of them).
    pub fn to_fields(&self) -> [(&'static str, String); FIELD_COUNT] {
        let version = if self.channel.as_str() == crate::DEFAULT_CHANNEL {
            DEFAULT_CHANNEL_VERSION
        } else {
            ENTRY_VERSION
        };
        [
            (FIELD_VERSION, version.to_string()),
            (FIELD_ID, self.id.hyphenated().to_string()),
            (FIELD_CHANNEL, self.channel.to_string()),
            (FIELD_RECEIVED_AT, format_received_at(&self.received_at)),
            (
                FIELD_REQUEST_ID,
                self.request_id.clone().unwrap_or_default(),
            ),
            (FIELD_PAYLOAD, self.payload.get().to_owned()),
        ]
    }

    /// Decodes the field/value pairs of an entry, payload checked as JSON.
    pub fn decode<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, DecodeError> {
        let parts = EntryParts::decode(fields)?;
        let payload = RawValue::from_string(parts.payload).map_err(|e| DecodeError::Malformed {
            field: FIELD_PAYLOAD,
            reason: e.to_string(),
        })?;
        Ok(Self {
            id: parts.id,
            channel: parts.channel,
            received_at: parts.received_at,
            payload,
            request_id: parts.request_id,
        })
    }
}

impl EntryParts {
    /// Decodes the field/value pairs of an entry. Unknown fields are ignored (a newer minor writer may add
    /// some); missing or malformed known fields are an error. The payload must be UTF-8 but is not parsed.
    pub fn decode<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, DecodeError> {
        let (mut version, mut id, mut received_at, mut payload) = (None, None, None, None);
        let (mut request_id, mut channel) = (None, None);
        for (name, value) in fields {
            match name {
                FIELD_VERSION => version = Some(value),
                FIELD_ID => id = Some(value),
                FIELD_RECEIVED_AT => received_at = Some(value),
                FIELD_PAYLOAD => payload = Some(value),
                FIELD_REQUEST_ID => request_id = Some(value),
                FIELD_CHANNEL => channel = Some(value),
                _ => {}
            }
        }
        let text = |field: &'static str, v: Option<&'a [u8]>| -> Result<&'a str, DecodeError> {
            let v = v.ok_or(DecodeError::MissingField(field))?;
            std::str::from_utf8(v).map_err(|e| DecodeError::Malformed {
                field,
                reason: e.to_string(),
            })
        };
        let malformed = |field: &'static str| {
            move |e: &dyn std::fmt::Display| DecodeError::Malformed {
                field,
                reason: e.to_string(),
            }
        };

        let version: u32 = text(FIELD_VERSION, version)?
            .parse()
            .map_err(|e| malformed(FIELD_VERSION)(&e))?;
        if version > ENTRY_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let id = Uuid::try_parse(text(FIELD_ID, id)?).map_err(|e| malformed(FIELD_ID)(&e))?;
        let received_at = DateTime::parse_from_rfc3339(text(FIELD_RECEIVED_AT, received_at)?)
            .map_err(|e| malformed(FIELD_RECEIVED_AT)(&e))?
            .to_utc();
        let payload = text(FIELD_PAYLOAD, payload)?.to_owned();
        let channel = match channel {
            Some(v) => text(FIELD_CHANNEL, Some(v))?
                .parse()
                .map_err(|e| malformed(FIELD_CHANNEL)(&e))?,
            None => ChannelName::default_channel(),
        };
        // A request id is only ever for the logs: one that is not text is dropped, not an error.
        let request_id = request_id
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Ok(Self {
            id,
            channel,
            received_at,
            payload,
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
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
}
