CREATE TABLE IF NOT EXISTS tasks (
    task_id uuid PRIMARY KEY,
    task_name text NOT NULL,
    spec jsonb NOT NULL,
    state text NOT NULL,
    stop_reason text,
    current_round integer NOT NULL DEFAULT 0,
    model_version integer NOT NULL DEFAULT 0,
    waiting_since timestamptz,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tasks_state_idx ON tasks (state);
CREATE TABLE IF NOT EXISTS task_events (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL,
    kind text NOT NULL,
    issued_by text,
    detail text,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS task_events_task_idx ON task_events (task_id, id);
CREATE TABLE IF NOT EXISTS rounds (
    round_id uuid PRIMARY KEY,
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    attempt integer NOT NULL,
    status text NOT NULL,
    participants text[] NOT NULL,
    model_version_in integer NOT NULL,
    model_version_out integer,
    deadline timestamptz NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz,
    accuracy double precision,
    loss double precision,
    train_loss double precision,
    num_examples integer,
    aggregated text[],
    dropped text[],
    rejected jsonb,
    bytes_up bigint,
    bytes_down bigint,
    duration_s double precision,
    failure text,
    UNIQUE (task_id, round_number, attempt)
);
CREATE INDEX IF NOT EXISTS rounds_open_idx ON rounds (status) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS models (
    task_id uuid NOT NULL,
    version integer NOT NULL,
    sha256 text NOT NULL,
    size_bytes integer NOT NULL,
    data bytea NOT NULL,
    round_number integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, version)
);
