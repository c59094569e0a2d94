-- One row per accepted message, in stream order.
--
-- The stream id `<ms>-<seq>` is kept as two bigints so that it sorts numerically ("5-10" after "5-9") and
-- `after=<stream_id>` paging is a range scan of the primary key: WHERE (stream_ms, stream_seq) > ($1, $2).
-- The payload is `json`, not `jsonb`: json keeps the client's text exactly (member order, number precision,
-- \u0000), which jsonb does not.
CREATE TABLE messages (
    stream_ms    BIGINT      NOT NULL,
    stream_seq   BIGINT      NOT NULL,
    id           UUID        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    payload      JSON        NOT NULL,
    -- When the persister's transaction wrote the row: the POST→row latency, and what an operator asks.
    persisted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_ms, stream_seq),
    CONSTRAINT messages_id_unique UNIQUE (id)
);
