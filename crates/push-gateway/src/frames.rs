//! The JSON text frames the gateway sends. Every server frame has a `type`.

use bytestring::ByteString;
use model::{ChannelPattern, Message, StreamEntry, StreamId};
use serde::Serialize;

use crate::hub::Frame;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Outgoing<'a> {
    /// One stream entry: `{"type":"message","data":<the message>}`.
    Message { data: &'a Message },
    /// Messages after `since` are gone; replay resumes at `oldest`. `channel`: the pattern of the
    /// `subscribe` frame whose replay it is.
    Gap {
        since: String,
        oldest: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// A `subscribe` frame's answer: the position the subscription starts after.
    Subscribed { channel: String, position: String },
    /// An `unsubscribe` frame's answer: no message of `channel` follows.
    Unsubscribed { channel: String },
    /// A client frame refused; the socket stays open. `channel`: the frame's pattern, when it had one.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        status: u16,
        title: String,
    },
    /// First frame of a connection without `since`: the stream position it starts after, so a client
    /// that disconnects before its first message can still resume with `since` (an addition to the
    /// contract's frame types; clients ignore types they do not know).
    Hello { position: String },
}

/// Encodes a message frame, once, for every client that gets it.
pub fn message(stream_id: StreamId, entry: StreamEntry) -> Frame {
    let channel: std::sync::Arc<str> = std::sync::Arc::from(entry.channel.as_str());
    let message = Message {
        id: entry.id,
        channel: entry.channel,
        stream_id,
        received_at: entry.received_at,
        payload: entry.payload,
    };
    Frame {
        stream_id,
        channel,
        received_at_us: message.received_at.timestamp_micros(),
        text: encode(&Outgoing::Message { data: &message }),
    }
}

pub fn gap(since: StreamId, oldest: StreamId, channel: Option<&ChannelPattern>) -> ByteString {
    encode(&Outgoing::Gap {
        since: since.to_string(),
        oldest: oldest.to_string(),
        channel: channel.map(ToString::to_string),
    })
}

pub fn subscribed(channel: &ChannelPattern, position: StreamId) -> ByteString {
    encode(&Outgoing::Subscribed {
        channel: channel.to_string(),
        position: position.to_string(),
    })
}

pub fn unsubscribed(channel: &ChannelPattern) -> ByteString {
    encode(&Outgoing::Unsubscribed {
        channel: channel.to_string(),
    })
}

pub fn error(channel: Option<&str>, status: u16, title: impl Into<String>) -> ByteString {
    encode(&Outgoing::Error {
        channel: channel.map(str::to_owned),
        status,
        title: title.into(),
    })
}

pub fn hello(position: StreamId) -> ByteString {
    encode(&Outgoing::Hello {
        position: position.to_string(),
    })
}

fn encode(frame: &Outgoing<'_>) -> ByteString {
    // Serializing these types cannot fail: every field is a string or already-valid JSON text.
    ByteString::from(serde_json::to_string(frame).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_contracts_shape() {
        let entry = StreamEntry {
            id: uuid::Uuid::nil(),
            channel: model::ChannelName::default_channel(),
            received_at: chrono::DateTime::from_timestamp_micros(0).unwrap(),
            payload: serde_json::value::RawValue::from_string("{\"b\":1,\"a\":2}".into()).unwrap(),
            request_id: None,
        };
        let frame = message(StreamId::new(5, 1), entry);
        assert_eq!(
            &*frame.text,
            r#"{"type":"message","data":{"id":"00000000-0000-0000-0000-000000000000","channel":"default","stream_id":"5-1","received_at":"1970-01-01T00:00:00.000000Z","payload":{"b":1,"a":2}}}"#
        );
        assert_eq!(
            &*gap(StreamId::new(1, 0), StreamId::new(9, 0), None),
            r#"{"type":"gap","since":"1-0","oldest":"9-0"}"#
        );
    }
}
