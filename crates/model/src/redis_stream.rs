//! Stream entries on the wire of Redis: the `XADD` of an entry, and `XREAD` / `XREADGROUP` / `XRANGE`
//! replies turned back into [`StreamEntry`]s without a map per entry (the hot path). Connections live in
//! the `service` crate.

use redis::Value;

use crate::{DecodeError, EntryParts, StreamEntry, StreamId};

pub use redis;

/// The `XADD` command for one entry (`*`: Redis assigns the stream id). Never with `MAXLEN`: trimming is
/// the persister's job, below what it has stored.
pub fn xadd_cmd(stream_key: &str, entry: &StreamEntry) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream_key).arg("*");
    for (field, value) in entry.to_fields() {
        cmd.arg(field).arg(value);
    }
    cmd
}

/// A stream id as Redis returned it; Redis only ever returns well-formed ones.
pub fn parse_reply_id(id: &str) -> Result<StreamId, DecodeError> {
    id.parse()
        .map_err(|e: crate::StreamIdError| DecodeError::Malformed {
            field: "stream id",
            reason: e.to_string(),
        })
}

/// A field's name in a [`RawEntry`]: the codec's own names are borrowed, not allocated for every entry
/// read (a drain reads five per entry, a million entries a run); any other name is owned.
pub type FieldName = std::borrow::Cow<'static, str>;

/// The [`FieldName`] for a name as Redis sent it. As for ids, a name that is not UTF-8 is read lossily:
/// Redis only sends names some writer gave it, and such a name is one no decoder knows.
pub fn field_name(name: &[u8]) -> FieldName {
    use crate::codec::{
        FIELD_CHANNEL, FIELD_ID, FIELD_PAYLOAD, FIELD_RECEIVED_AT, FIELD_REQUEST_ID, FIELD_VERSION,
    };
    [
        FIELD_VERSION,
        FIELD_ID,
        FIELD_CHANNEL,
        FIELD_RECEIVED_AT,
        FIELD_PAYLOAD,
        FIELD_REQUEST_ID,
    ]
    .into_iter()
    .find(|known| known.as_bytes() == name)
    .map_or_else(
        || FieldName::Owned(String::from_utf8_lossy(name).into_owned()),
        FieldName::Borrowed,
    )
}

/// One entry of a stream reply as Redis sent it, its bytes moved out of the reply (no per-entry map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(FieldName, Vec<u8>)>,
}

impl RawEntry {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v.as_slice()))
    }

    /// The entry with its payload checked as JSON.
    pub fn decode(
        &self,
    ) -> (
        Result<StreamId, DecodeError>,
        Result<StreamEntry, DecodeError>,
    ) {
        (parse_reply_id(&self.id), StreamEntry::decode(self.pairs()))
    }

    /// The entry with its payload as unchecked text.
    pub fn decode_parts(
        &self,
    ) -> (
        Result<StreamId, DecodeError>,
        Result<EntryParts, DecodeError>,
    ) {
        (parse_reply_id(&self.id), EntryParts::decode(self.pairs()))
    }
}

fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        // RESP3 maps (XREAD's key → entries) flatten to key, value, key, value…
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn into_string(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
        Value::SimpleString(s) => s,
        _ => String::new(),
    }
}

/// A list of entries (`XRANGE`, the claimed part of `XAUTOCLAIM`): `[[id, [field, value, …]], …]`. An
/// entry deleted while pending comes back as `[id, nil]` and has no fields.
pub fn entry_list(list: Value) -> Vec<RawEntry> {
    into_items(list)
        .into_iter()
        .map(|entry| {
            let mut parts = into_items(entry).into_iter();
            let id = parts.next().map(into_string).unwrap_or_default();
            let mut flat = parts.next().map(into_items).unwrap_or_default().into_iter();
            let mut fields = Vec::with_capacity(4);
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                let v = match v {
                    Value::BulkString(b) => b,
                    Value::SimpleString(s) => s.into_bytes(),
                    _ => Vec::new(),
                };
                let name = match k {
                    Value::BulkString(b) => field_name(&b),
                    Value::SimpleString(s) => field_name(s.as_bytes()),
                    _ => FieldName::Borrowed(""),
                };
                fields.push((name, v));
            }
            RawEntry { id, fields }
        })
        .collect()
}

/// The entries of an `XREAD`/`XREADGROUP` reply on one stream (`[[key, entries]]`; nil when none).
pub fn read_reply(reply: Value) -> Vec<RawEntry> {
    let mut items = into_items(reply).into_iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        // RESP2: each item is [key, entries]; RESP3 (flattened map): key, entries.
        let entries = match item {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => items.next(),
        };
        out.extend(entries.map(entry_list).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_codecs_field_names_are_borrowed_and_others_owned_and_read_alike_by_both_readers() {
        for known in ["v", "id", "received_at", "payload", "rid"] {
            assert!(matches!(field_name(known.as_bytes()), FieldName::Borrowed(n) if n == known));
        }
        assert!(matches!(field_name(b"extra"), FieldName::Owned(n) if n == "extra"));
        // A name that is not UTF-8 reads the same from a Value and from the raw reply bytes.
        let reply =
            b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$2\r\n\xffa\r\n$1\r\nx\r\n";
        let raw = crate::resp::read_reply(reply).unwrap();
        let value = read_reply(Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-1"),
                Value::Array(vec![Value::BulkString(b"\xffa".to_vec()), bulk("x")]),
            ])]),
        ])]));
        assert_eq!(raw, value);
        assert_eq!(raw[0].fields[0].0, "\u{fffd}a");
    }

    #[test]
    fn replies_are_walked_without_maps_and_deleted_entries_have_no_fields() {
        let entry = |id: &str, f: Value| Value::Array(vec![bulk(id), f]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("key"),
            Value::Array(vec![
                entry(
                    "1-0",
                    Value::Array(vec![bulk("v"), bulk("1"), bulk("payload"), bulk("[1]")]),
                ),
                entry("2-0", Value::Nil),
            ]),
        ])]);
        let entries = read_reply(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            vec![
                ("v".into(), b"1".to_vec()),
                ("payload".into(), b"[1]".to_vec())
            ]
        );
        assert!(entries[1].fields.is_empty());
        assert!(read_reply(Value::Nil).is_empty());
    }
}
