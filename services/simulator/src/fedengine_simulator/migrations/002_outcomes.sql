-- What each simulated device did with each train request (core/behaviour.py): completed,
-- unavailable, or how it failed, with its simulated seconds; `fedengine bench simulate` counts
-- failures by kind and a round's simulated length from it.
CREATE TABLE IF NOT EXISTS outcomes (
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    device_id text NOT NULL,
    outcome text NOT NULL,
    sim_s double precision NOT NULL,
    compute_s double precision NOT NULL,
    transfer_s double precision NOT NULL,
    battery_pct double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, round_number, device_id)
);
