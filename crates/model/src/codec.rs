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
mod tests;
