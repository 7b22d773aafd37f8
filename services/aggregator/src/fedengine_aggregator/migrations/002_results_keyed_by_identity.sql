-- Results keyed by what they are (broker offsets restart with an in-memory broker, so a key on
-- (partition, offset) silently overwrote older results): an accepted update is unique per
-- (round, device), a rejection per message id; partition and offset stay as provenance.
ALTER TABLE device_results DROP CONSTRAINT IF EXISTS device_results_kafka_partition_kafka_offset_key;
DELETE FROM device_results a USING device_results b
    WHERE a.status = 'accepted' AND b.status = 'accepted'
      AND a.round_id = b.round_id AND a.device_id = b.device_id AND a.id > b.id;
DELETE FROM device_results a USING device_results b
    WHERE a.status = 'rejected' AND b.status = 'rejected'
      AND a.message_id = b.message_id AND a.id > b.id;
CREATE UNIQUE INDEX IF NOT EXISTS device_results_accepted_key
    ON device_results (round_id, device_id) WHERE status = 'accepted';
CREATE UNIQUE INDEX IF NOT EXISTS device_results_rejected_key
    ON device_results (message_id) WHERE status = 'rejected';
