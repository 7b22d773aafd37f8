-- What a device's heartbeat tells of its power and link, where its platform tells
-- (fedcommon.messages.v1.HeartbeatSent): NULL until a heartbeat says.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS charging boolean;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS network text;
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_network_check;
ALTER TABLE devices ADD CONSTRAINT devices_network_check
    CHECK (network IN ('wifi', 'cellular', 'ethernet', 'other'));

CREATE OR REPLACE VIEW devices_public AS
SELECT device_id, device_name, device_type, privacy_level, capabilities, public_key, fleet,
       status, enrolled_at, last_heartbeat_at, battery_pct, enrolment_token_id, removed_at,
       updated_at, charging, network
FROM devices;
