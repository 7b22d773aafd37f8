CREATE TABLE IF NOT EXISTS trained (
    round_id uuid NOT NULL,
    device_id text NOT NULL,
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    num_examples integer NOT NULL,
    train_loss double precision NOT NULL,
    duration_s double precision NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (round_id, device_id)
);
