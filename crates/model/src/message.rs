//! The message envelope as clients see it, in the `202`, on `GET /messages` and in WebSocket frames.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{ChannelName, StreamId};

/// One persisted (or streamed) message. `payload` is the client's JSON text, byte for byte.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f",
    "channel": "default",
    "stream_id": "1732478400123-0",
    "received_at": "2026-11-24T20:00:00.123456Z",
    "payload": {"any": "JSON the client posted"}
}))]
pub struct Message {
    /// A UUIDv7 that ingest-api assigns.
    pub id: Uuid,
    /// The channel it was published to.
    #[serde(deserialize_with = "de_channel")]
    #[schema(value_type = String, pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub channel: ChannelName,
    /// The Redis Stream entry id: the one total order of the pipeline.
    #[serde(deserialize_with = "de_stream_id")]
    #[schema(value_type = String, pattern = "^[0-9]+-[0-9]+$")]
    pub stream_id: StreamId,
    /// When ingest-api accepted it: RFC 3339, UTC, microseconds, `Z`.
    pub received_at: DateTime<Utc>,
    /// The posted JSON value, unchanged.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
}

/// What `POST /messages` answers for each accepted message.
// Its four fields repeat `Message`'s with their attributes, on purpose: `#[serde(flatten)]` would make
// serde buffer every message of a read through a map of its own, and nest the OpenAPI schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f",
    "channel": "default",
    "stream_id": "1732478400123-0",
    "received_at": "2026-11-24T20:00:00.123456Z"
}))]
pub struct Accepted {
    pub id: Uuid,
    #[serde(deserialize_with = "de_channel")]
    #[schema(value_type = String, pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub channel: ChannelName,
    #[serde(deserialize_with = "de_stream_id")]
    #[schema(value_type = String, pattern = "^[0-9]+-[0-9]+$")]
    pub stream_id: StreamId,
    pub received_at: DateTime<Utc>,
}

/// RFC 3339, UTC, exactly six fractional digits and `Z`: the one spelling of `received_at` everywhere,
/// so the 202, the REST reads and the WebSocket frames carry the same string.
pub fn format_received_at(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The current time at the precision that Postgres `timestamptz` keeps (microseconds), so that what is
/// stored reads back as exactly what was answered.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

fn de_channel<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ChannelName, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_stream_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamId, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Message", 5)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("channel", self.channel.as_str())?;
        st.serialize_field("stream_id", &self.stream_id.to_string())?;
        st.serialize_field("received_at", &format_received_at(&self.received_at))?;
        st.serialize_field("payload", &self.payload)?;
        st.end()
    }
}

impl Serialize for Accepted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Accepted", 4)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("channel", self.channel.as_str())?;
        st.serialize_field("stream_id", &self.stream_id.to_string())?;
        st.serialize_field("received_at", &format_received_at(&self.received_at))?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_has_microseconds_and_z() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T20:00:00.123456789+00:00")
            .unwrap()
            .to_utc();
        assert_eq!(format_received_at(&at), "2026-11-24T20:00:00.123456Z");
        let whole = DateTime::parse_from_rfc3339("2026-11-24T20:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(format_received_at(&whole), "2026-11-24T20:00:00.000000Z");
    }

    #[test]
    fn a_message_serializes_its_payload_unchanged() {
        let m = Message {
            id: Uuid::nil(),
            channel: "chat.1".parse().unwrap(),
            stream_id: StreamId::new(1, 2),
            received_at: DateTime::from_timestamp_micros(1).unwrap(),
            payload: RawValue::from_string(r#"{"b":1,"a":123456789012345678901234567890}"#.into())
                .unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"00000000-0000-0000-0000-000000000000","channel":"chat.1","stream_id":"1-2","received_at":"1970-01-01T00:00:00.000001Z","payload":{"b":1,"a":123456789012345678901234567890}}"#
        );
    }
}
