-- What other services may read of the coordinator (the gateway's projections, the model
-- store the simulated devices read from): these views,
-- never the tables (tests/unit/test_schema_boundaries.py checks every service's SQL). A change
-- to a table keeps its view's columns (PostgreSQL refuses to drop a column a view uses) or
-- changes the view here, in the owner's own migration, where the change is seen.
CREATE OR REPLACE VIEW tasks_public AS
SELECT task_id, task_name, spec, state, stop_reason, current_round, model_version, created_by,
       created_at, started_at, finished_at
FROM tasks;

CREATE OR REPLACE VIEW rounds_public AS
SELECT task_id, round_number, attempt, status, participants, aggregated, dropped, rejected,
       accuracy, loss, train_loss, num_examples, bytes_up, bytes_down, duration_s, opened_at,
       closed_at, failure
FROM rounds;

CREATE OR REPLACE VIEW task_events_public AS
SELECT id, task_id, kind, issued_by, detail, at
FROM task_events;

CREATE OR REPLACE VIEW models_public AS
SELECT task_id, version, sha256, data
FROM models;
