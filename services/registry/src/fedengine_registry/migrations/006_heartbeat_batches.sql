-- Heartbeats are applied in batches with no dedupe row each (issue 17): the sequence makes
-- a heartbeat idempotent, and the id of the one applied last lets its redelivery be skipped.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS heartbeat_message_id uuid;
-- The offline timer reads the online devices silent longest, not every device.
CREATE INDEX IF NOT EXISTS devices_online_last_heartbeat_idx
    ON devices (last_heartbeat_at) WHERE status = 'online';
-- The hourly purge of the ids still deduplicated (enrolments, tokens, removals).
CREATE INDEX IF NOT EXISTS processed_messages_processed_at_idx
    ON processed_messages (processed_at);
