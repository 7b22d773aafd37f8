-- Enrolment tokens an operator issued for a fleet: only the public half is kept.
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    token_id uuid PRIMARY KEY,
    fleet text NOT NULL,
    public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
    expires_at timestamptz NOT NULL,
    max_devices integer NOT NULL CHECK (max_devices > 0),
    issued_by text,
    issued_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    revoked_by text
);
-- The token a device enrolled itself with (NULL when an operator enrolled it).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS enrolment_token_id uuid;
CREATE INDEX IF NOT EXISTS devices_enrolment_token_idx ON devices (enrolment_token_id);
