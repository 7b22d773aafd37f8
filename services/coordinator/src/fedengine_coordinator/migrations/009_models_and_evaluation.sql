-- Issue 16: models as artifacts and federated evaluation.
--
-- uploaded_models: initial models uploaded through the gateway (model.uploaded), checked there
-- (fedcommon.model_files: finite F32 tensors); a task naming one copies it as its version 0.
CREATE TABLE IF NOT EXISTS uploaded_models (
    model_id uuid PRIMARY KEY,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    data bytea NOT NULL,
    -- [{"name", "shape", "dtype"}] in update order, as the gateway's check found them.
    tensors jsonb NOT NULL,
    name text NOT NULL,
    uploaded_by text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE VIEW uploaded_models_public AS
SELECT model_id, sha256, octet_length(data) AS size_bytes, tensors, name, uploaded_by,
       uploaded_at
FROM uploaded_models;

-- One federated evaluation of a model version: the devices asked, until when, and (once it is
-- over) the example-weighted means of what they answered in time.
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    round_number integer NOT NULL,
    model_version integer NOT NULL,
    devices text[] NOT NULL,
    deadline timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'completed', 'abandoned')),
    answered integer NOT NULL DEFAULT 0,
    num_examples bigint NOT NULL DEFAULT 0,
    loss double precision,
    accuracy double precision,
    metrics jsonb NOT NULL DEFAULT '{}'::jsonb,
    opened_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz
);
-- At most one open evaluation per task: the task waits for it before its next round.
CREATE UNIQUE INDEX IF NOT EXISTS evaluations_one_open
    ON evaluations (task_id) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS evaluations_task ON evaluations (task_id, round_number);

CREATE TABLE IF NOT EXISTS evaluation_results (
    evaluation_id uuid NOT NULL REFERENCES evaluations (evaluation_id) ON DELETE CASCADE,
    device_id text NOT NULL,
    num_examples bigint NOT NULL CHECK (num_examples > 0),
    loss double precision NOT NULL,
    metrics jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (evaluation_id, device_id)
);

-- The round's federated metrics (NULL: not evaluated by devices, or nobody answered).
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS fed_accuracy double precision;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS fed_loss double precision;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS fed_examples bigint;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS fed_devices integer;

CREATE OR REPLACE VIEW rounds_public AS
SELECT task_id, round_number, attempt, status,
       CASE WHEN sample_rate IS NULL THEN participants ELSE '{}'::text[] END AS participants,
       CASE WHEN sample_rate IS NULL THEN aggregated ELSE '{}'::text[] END AS aggregated,
       CASE WHEN sample_rate IS NULL THEN dropped ELSE '{}'::text[] END AS dropped,
       rejected, accuracy, loss, train_loss, num_examples, bytes_up, bytes_down, duration_s,
       opened_at, closed_at, failure, epsilon_spent, noise_multiplier, sample_rate, clip_norm,
       fed_accuracy, fed_loss, fed_examples, fed_devices
FROM rounds;

CREATE OR REPLACE VIEW evaluations_public AS
SELECT evaluation_id, task_id, round_number, model_version, cardinality(devices) AS asked,
       deadline, status, answered, num_examples, loss, accuracy, metrics, opened_at, closed_at
FROM evaluations;

-- A device asked to evaluate a version may fetch it too (the gateway's signed model fetch).
CREATE OR REPLACE VIEW model_requests_public AS
SELECT r.task_id, r.round_id, r.round_number, r.attempt, p.device_id,
       r.model_version_in AS model_version, r.deadline, r.status
FROM rounds r
CROSS JOIN LATERAL unnest(r.participants) AS p(device_id)
WHERE r.sample_rate IS NULL OR r.approval_id IS NOT NULL
UNION ALL
SELECT e.task_id, e.evaluation_id, e.round_number, 0, d.device_id, e.model_version, e.deadline,
       e.status
FROM evaluations e
CROSS JOIN LATERAL unnest(e.devices) AS d(device_id);
