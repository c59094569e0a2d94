-- Channels: every message belongs to one; messages from before channels belong to `default`.
--
-- Adding a column with a constant default rewrites nothing (Postgres 11 and later). The index serves a
-- channel's reads (`GET /channels/{c}/messages`, a subscription's replay) as a range scan in stream order.
ALTER TABLE messages ADD COLUMN channel TEXT NOT NULL DEFAULT 'default';
CREATE INDEX messages_channel_position ON messages (channel, stream_ms, stream_seq);

-- One row per channel that holds a message, kept by the persister in the same transaction as the rows,
-- so `GET /channels` never counts messages.
CREATE TABLE channels (
    channel          TEXT        PRIMARY KEY,
    messages         BIGINT      NOT NULL,
    last_stream_ms   BIGINT      NOT NULL,
    last_stream_seq  BIGINT      NOT NULL,
    last_received_at TIMESTAMPTZ NOT NULL
);

INSERT INTO channels (channel, messages, last_stream_ms, last_stream_seq, last_received_at)
SELECT 'default', count(*), last.stream_ms, last.stream_seq, last.received_at
FROM messages,
     (SELECT stream_ms, stream_seq, received_at FROM messages
      ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1) AS last
GROUP BY last.stream_ms, last.stream_seq, last.received_at;

-- The newest stream position HISTORY_RETENTION has deleted: a replay that starts before it tells the
-- client of the gap instead of skipping silently. One row at most.
CREATE TABLE history_horizon (
    one        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    stream_ms  BIGINT  NOT NULL,
    stream_seq BIGINT  NOT NULL
);
