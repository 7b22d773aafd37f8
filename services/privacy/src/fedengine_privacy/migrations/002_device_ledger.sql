-- The device-level ledger of local DP-SGD (issue 9). device_releases: one row per device asked
-- to train a round's try with DP-SGD, with the settings the coordinator chose (never what the
-- device reports) and the device's ε after it, for that task and over its lifetime (RDP over
-- all its rows at δ). Append-only, like the task ledger (refuse_change is 001's).

CREATE TABLE device_releases (
    device_id text NOT NULL,
    task_id uuid NOT NULL,
    round_id uuid,
    round_number integer NOT NULL CHECK (round_number >= 1),
    attempt integer NOT NULL CHECK (attempt >= 0),
    level text NOT NULL CHECK (level IN ('low', 'medium', 'high')),
    noise_multiplier float8 NOT NULL CHECK (noise_multiplier > 0),
    sample_rate float8 NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps integer NOT NULL CHECK (steps >= 1),
    max_grad_norm float8 NOT NULL CHECK (max_grad_norm > 0),
    delta float8 NOT NULL CHECK (delta > 0 AND delta < 1),
    epsilon_task_budget float8 NOT NULL CHECK (epsilon_task_budget > 0),
    epsilon_lifetime_budget float8 NOT NULL CHECK (epsilon_lifetime_budget > 0),
    -- 'Infinity' where ε is beyond any meaningful guarantee.
    epsilon_task_after float8 NOT NULL CHECK (epsilon_task_after >= 0),
    epsilon_lifetime_after float8 NOT NULL CHECK (epsilon_lifetime_after >= 0),
    -- Whether one more such release would pass the task's (the lifetime) budget: the
    -- coordinator stops asking this device for this task (for any task).
    task_exhausted boolean NOT NULL,
    lifetime_exhausted boolean NOT NULL,
    request_message_id uuid NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- Charged once per (device, task, round, attempt), whatever arrives twice.
    PRIMARY KEY (device_id, task_id, round_number, attempt)
);

CREATE TRIGGER device_releases_append_only BEFORE UPDATE OR DELETE ON device_releases
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER device_releases_no_truncate BEFORE TRUNCATE ON device_releases
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- GET /api/federated/privacy/budget?device_id= reads this.
CREATE OR REPLACE VIEW device_ledger_public AS
SELECT device_id, task_id, round_id, round_number, attempt, level, noise_multiplier,
       sample_rate, steps, max_grad_norm, delta, epsilon_task_budget, epsilon_lifetime_budget,
       epsilon_task_after, epsilon_lifetime_after, task_exhausted, lifetime_exhausted,
       recorded_at
FROM device_releases;

-- The coordinator's selection reads this: a device is not asked again for a task whose
-- budget it would pass, nor for any task once its lifetime budget would be passed.
CREATE OR REPLACE VIEW device_exhaustion_public AS
SELECT device_id, task_id, bool_or(task_exhausted) AS task_exhausted,
       bool_or(lifetime_exhausted) AS lifetime_exhausted
FROM device_releases
GROUP BY device_id, task_id;
