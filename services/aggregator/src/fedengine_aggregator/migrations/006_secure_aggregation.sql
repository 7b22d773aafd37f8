-- Secure aggregation (issue 15). secagg_log: per round and stage, how many devices were
-- expected, delivered, dropped and were rejected, how long the stage took and the bytes each
-- way; never keys, shares, masks or updates. A DP round's row is private (its counts would
-- show how many devices it drew): the public view leaves it out.
CREATE TABLE IF NOT EXISTS secagg_log (
    round_id uuid NOT NULL,
    task_id uuid NOT NULL,
    round_number integer NOT NULL,
    attempt integer NOT NULL,
    stage smallint NOT NULL,
    stage_name text NOT NULL,
    expected integer NOT NULL,
    delivered integer NOT NULL,
    dropped integer NOT NULL,
    rejected integer NOT NULL,
    seconds double precision NOT NULL,
    bytes_up bigint NOT NULL,
    bytes_down bigint NOT NULL,
    private boolean NOT NULL DEFAULT false,
    logged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (round_id, stage)
);
CREATE INDEX IF NOT EXISTS secagg_log_task_idx ON secagg_log (task_id, round_number);
CREATE OR REPLACE VIEW secagg_log_public AS
SELECT task_id, round_id, round_number, attempt, stage, stage_name, expected, delivered, dropped,
       rejected, seconds, bytes_up, bytes_down
FROM secagg_log
WHERE NOT private;
-- The SecAgg+ server state when each stage of an open secure round began (public keys, who
-- answered, the masked running sum: fedprivacy.secagg.server_state's bytes), written with that
-- stage's deliveries in one transaction, so that a restarted aggregator resumes the stage
-- instead of deciding it again. Deleted when the round closes.
CREATE TABLE IF NOT EXISTS secagg_checkpoints (
    round_id uuid NOT NULL,
    stage smallint NOT NULL,
    started_at timestamptz NOT NULL,
    expected text[] NOT NULL,
    server_state bytea NOT NULL,
    PRIMARY KEY (round_id, stage)
);
