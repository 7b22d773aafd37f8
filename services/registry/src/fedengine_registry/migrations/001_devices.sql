CREATE TABLE IF NOT EXISTS devices (
    device_id text PRIMARY KEY,
    device_name text NOT NULL,
    device_type text NOT NULL,
    privacy_level text NOT NULL,
    capabilities jsonb NOT NULL,
    public_key bytea,
    fleet text,
    status text NOT NULL,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    heartbeat_sequence bigint NOT NULL DEFAULT -1,
    battery_pct double precision,
    removed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_status_idx ON devices (status);
CREATE TABLE IF NOT EXISTS device_events (
    id bigserial PRIMARY KEY,
    device_id text NOT NULL,
    kind text NOT NULL,
    issued_by text,
    at timestamptz NOT NULL DEFAULT now()
);
