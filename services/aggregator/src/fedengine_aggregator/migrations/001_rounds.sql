CREATE TABLE IF NOT EXISTS rounds (
    round_id uuid PRIMARY KEY,
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    participants text[] NOT NULL,
    dropped text[] NOT NULL,
    rejected jsonb NOT NULL,
    bytes_up bigint NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rounds_task_idx ON rounds (task_id);
CREATE TABLE IF NOT EXISTS device_results (
    id bigserial PRIMARY KEY,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    task_id uuid NOT NULL,
    round_id uuid,
    round_number integer NOT NULL,
    device_id text NOT NULL,
    message_id uuid NOT NULL,
    status text NOT NULL,
    reason text,
    detail text,
    num_examples integer,
    train_loss double precision,
    train_accuracy double precision,
    duration_s double precision,
    size_bytes integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS device_results_task_idx ON device_results (task_id, round_number);
