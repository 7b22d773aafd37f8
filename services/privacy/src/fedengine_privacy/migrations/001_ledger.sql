-- The privacy service's ledger (issue 9). budgets: each DP task's budget, fixed by its first
-- spend request. releases: one row per approved release, the plain numbers ε is recomputed
-- from (never a cached ε). audit_log: every decision, who asked and why. The ledger and the
-- audit log are append-only: a trigger refuses UPDATE, DELETE and TRUNCATE, so neither a bug
-- nor /cleanup can rewrite what was spent.

CREATE TABLE budgets (
    task_id uuid PRIMARY KEY,
    epsilon_budget float8 NOT NULL CHECK (epsilon_budget > 0),
    delta float8 NOT NULL CHECK (delta > 0 AND delta < 1),
    accountant text NOT NULL CHECK (accountant IN ('rdp', 'pld')),
    clip_norm float8 NOT NULL CHECK (clip_norm > 0),
    noise_multiplier float8 NOT NULL CHECK (noise_multiplier > 0),
    calibrated boolean NOT NULL,
    planned_rounds integer NOT NULL CHECK (planned_rounds >= 1),
    -- When the first refusal for exhaustion was announced (privacy.budget_exhausted).
    exhausted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE releases (
    approval_id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES budgets (task_id),
    -- The try's round id (the request's envelope); NULL only if a request carried none.
    round_id uuid,
    round_number integer NOT NULL CHECK (round_number >= 1),
    attempt integer NOT NULL CHECK (attempt >= 0),
    mechanism text NOT NULL CHECK (mechanism IN ('subsampled_gaussian')),
    noise_multiplier float8 NOT NULL CHECK (noise_multiplier > 0),
    sample_rate float8 NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps integer NOT NULL CHECK (steps >= 1),
    clip_norm float8 NOT NULL CHECK (clip_norm > 0),
    epsilon_after float8 NOT NULL CHECK (epsilon_after >= 0),
    delta float8 NOT NULL CHECK (delta > 0 AND delta < 1),
    accountant text NOT NULL CHECK (accountant IN ('rdp', 'pld')),
    request_message_id uuid NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    -- Charged once per (task, round, attempt), whatever arrives twice.
    UNIQUE (task_id, round_number, attempt)
);

CREATE TABLE audit_log (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    attempt integer NOT NULL,
    request_message_id uuid NOT NULL,
    -- The service that signed the request, and the task's owner it asked for.
    requested_by text NOT NULL,
    on_behalf_of text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('approved', 'refused', 'duplicate')),
    reason text,
    epsilon_before float8 NOT NULL,
    -- What approval makes (or would make) ε; NULL where it is not computable.
    epsilon_after float8,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_task ON audit_log (task_id, round_number, attempt);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP;
END
$$;

CREATE TRIGGER releases_append_only BEFORE UPDATE OR DELETE ON releases
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER releases_no_truncate BEFORE TRUNCATE ON releases
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- What other services may read (the gateway's GET /api/federated/privacy/budget): these
-- views, never the tables (tests/unit/test_schema_boundaries.py).
CREATE OR REPLACE VIEW budgets_public AS
SELECT b.task_id, b.epsilon_budget, b.delta, b.accountant, b.clip_norm, b.noise_multiplier,
       b.calibrated, b.planned_rounds,
       -- ε only grows with releases: the largest recorded is the latest.
       COALESCE(spent.epsilon_spent, 0)::float8 AS epsilon_spent,
       COALESCE(spent.releases, 0)::integer AS releases,
       b.exhausted_at, b.created_at
FROM budgets b
LEFT JOIN LATERAL (
    SELECT max(r.epsilon_after) AS epsilon_spent, count(*) AS releases
    FROM releases r WHERE r.task_id = b.task_id
) spent ON true;

CREATE OR REPLACE VIEW releases_public AS
SELECT approval_id, task_id, round_id, round_number, attempt, mechanism, noise_multiplier,
       sample_rate, steps, clip_norm, epsilon_after, delta, accountant, released_at
FROM releases;

CREATE OR REPLACE VIEW audit_public AS
SELECT audit_id, task_id, round_number, attempt, request_message_id, requested_by,
       on_behalf_of, decision, reason, epsilon_before, epsilon_after, at
FROM audit_log;
