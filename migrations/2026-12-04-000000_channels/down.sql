DROP TABLE history_horizon;
DROP TABLE channels;
DROP INDEX messages_channel_position;
ALTER TABLE messages DROP COLUMN channel;
