//! Rows as Diesel reads and writes them. The payload travels as its JSON text ([`JsonText`]): it is never
//! parsed into a `serde_json::Value`, which would round big numbers and is slower.

use std::io::Write;

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Json;
use model::{format_received_at, EntryParts, StreamId};
use uuid::Uuid;

use crate::schema::{messages, messages_staging};

/// JSON text for a `json` column. Postgres' binary format of `json` is the text itself.
#[derive(Debug, Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Json)]
pub struct JsonText(pub String);

impl ToSql<Json, Pg> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.0.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Json, Pg> for JsonText {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(Self(String::from_utf8(value.as_bytes().to_vec())?))
    }
}

/// A row to store, made from one decoded stream entry.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct NewMessage {
    pub stream_ms: i64,
    pub stream_seq: i64,
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub payload: JsonText,
    pub channel: String,
}

/// The same row for the staging table.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = messages_staging, treat_none_as_default_value = false)]
pub struct StagedMessage<'a> {
    pub stream_ms: i64,
    pub stream_seq: i64,
    pub id: &'a Uuid,
    pub received_at: &'a DateTime<Utc>,
    pub payload: &'a JsonText,
    pub channel: &'a str,
}

impl NewMessage {
    pub fn from_entry(stream_id: StreamId, entry: impl Into<EntryParts>) -> Self {
        let entry = entry.into();
        let (stream_ms, stream_seq) = stream_id.as_i64_pair();
        Self {
            stream_ms,
            stream_seq,
            id: entry.id,
            received_at: entry.received_at,
            payload: JsonText(entry.payload),
            channel: entry.channel.to_string(),
        }
    }

    pub fn stream_id(&self) -> StreamId {
        StreamId::from_i64_pair(self.stream_ms, self.stream_seq)
    }

    /// Why Postgres would refuse this row as data (SQLSTATE class 22), checked here before it is sent.
    ///
    /// Diesel hands back no SQLSTATE — class 22 arrives as `DatabaseErrorKind::Unknown`, told apart from a
    /// disk-full or timeout error only by its message, whose language follows the server's `lc_messages`.
    /// So the persister never asks Postgres this question: a row that passes here cannot raise a data
    /// exception, and every `Unknown` error is the server's, retried whole.
    /// - the payload must be JSON as the `json` type parses it: RFC 8259's grammar, escapes with four hex
    ///   digits, no unescaped control character (so a raw NUL can only be refused). The `json` type takes
    ///   any number the grammar allows (`1e400`) and a lone surrogate escape (`"\ud800"`), as ingest-api
    ///   does: the text is checked without being built into a value, which would refuse both (a number
    ///   out of `f64` range, a surrogate that is no `char`) and dead-letter a message that was promised
    ///   with a 202;
    /// - `received_at` must be within `timestamptz`'s range (4713 BC to 294276 AD).
    pub fn refused_by_postgres(&self) -> Option<String> {
        if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(&self.payload.0) {
            return Some(format!("the payload is not valid JSON ({e})"));
        }
        let year = chrono::Datelike::year(&self.received_at);
        if !(-4712..=294_275).contains(&year) {
            return Some(format!(
                "received_at {} is outside Postgres' timestamp range",
                self.received_at
            ));
        }
        None
    }

    pub(crate) fn staged(&self) -> StagedMessage<'_> {
        StagedMessage {
            stream_ms: self.stream_ms,
            stream_seq: self.stream_seq,
            id: &self.id,
            received_at: &self.received_at,
            payload: &self.payload,
            channel: &self.channel,
        }
    }
}

/// A stored message as the API returns it.
// The same columns as `NewMessage`, on purpose: Diesel's `Queryable` maps a `SELECT` by position and
// `Insertable` an `INSERT` by name, and keeping the row read apart from the row written lets either
// change (a column only one side has) without touching the other.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = messages, check_for_backend(Pg))]
pub struct MessageRow {
    pub stream_ms: i64,
    pub stream_seq: i64,
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub payload: JsonText,
    pub channel: String,
}

impl MessageRow {
    pub fn stream_id(&self) -> StreamId {
        StreamId::from_i64_pair(self.stream_ms, self.stream_seq)
    }

    /// Appends the message's JSON (the contract's envelope) to `out`. The payload text is copied as it is:
    /// the `json` column only holds valid JSON, so there is nothing to re-check or re-encode.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        // Channel names are checked when published (letters, digits and `_-.:`): nothing to escape.
        out.extend_from_slice(b"\",\"channel\":\"");
        out.extend_from_slice(self.channel.as_bytes());
        out.extend_from_slice(b"\",\"stream_id\":\"");
        out.extend_from_slice(self.stream_id().to_string().as_bytes());
        out.extend_from_slice(b"\",\"received_at\":\"");
        out.extend_from_slice(format_received_at(&self.received_at).as_bytes());
        out.extend_from_slice(b"\",\"payload\":");
        out.extend_from_slice(self.payload.0.as_bytes());
        out.push(b'}');
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.0.len() + 128);
        self.write_json(&mut out);
        out
    }
}
