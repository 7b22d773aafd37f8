-- What other services may read of the registry: the gateway's projections and the
-- coordinator's device selection read these views, never the tables (tests/unit/
-- test_schema_boundaries.py checks every service's SQL). A change to a table keeps its view's
-- columns (PostgreSQL refuses to drop a column a view uses) or changes the view here, in the
-- owner's own migration, where the change is seen.
CREATE OR REPLACE VIEW devices_public AS
SELECT device_id, device_name, device_type, privacy_level, capabilities, public_key, fleet,
       status, enrolled_at, last_heartbeat_at, battery_pct, enrolment_token_id, removed_at,
       updated_at
FROM devices;

-- The public half of each token only: what was issued, to which fleet, and its state.
CREATE OR REPLACE VIEW enrolment_tokens_public AS
SELECT token_id, fleet, expires_at, max_devices, issued_by, issued_at, revoked_at, revoked_by
FROM enrolment_tokens;
