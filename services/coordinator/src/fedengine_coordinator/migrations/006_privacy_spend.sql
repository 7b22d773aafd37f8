-- Differential privacy (issue 9). A DP task's round try is stored 'awaiting_spend' with the
-- devices drawn for it until the privacy service approves its spend (then 'open') or refuses
-- it ('abandoned'; the task completes with stop reason 'privacy_budget_exhausted').
-- tests/unit/coordinator/test_state.py reads the newest constraint of each name.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_stop_reason_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_stop_reason_check
    CHECK (stop_reason IN ('max_rounds', 'error', 'target_accuracy', 'converged',
                           'too_few_devices', 'round_failed', 'cancelled',
                           'privacy_budget_exhausted'));
ALTER TABLE rounds DROP CONSTRAINT IF EXISTS rounds_status_check;
ALTER TABLE rounds ADD CONSTRAINT rounds_status_check
    CHECK (status IN ('awaiting_spend', 'open', 'completed', 'failed', 'abandoned'));

-- A DP try: the Poisson rate its devices were drawn with and how many it expects (q times the
-- pool: DP-FedAvg's fixed denominator); once approved, the approval and what it cost.
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS sample_rate double precision;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS expected_participants double precision;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS approval_id uuid;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS epsilon_spent double precision;
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS noise_multiplier double precision;

-- A DP round's participant list is not published (amplification by sampling assumes nobody
-- learns who was drawn): readers see an empty list; the coordinator keeps it for itself.
CREATE OR REPLACE VIEW rounds_public AS
SELECT task_id, round_number, attempt, status,
       CASE WHEN sample_rate IS NULL THEN participants ELSE '{}'::text[] END AS participants,
       CASE WHEN sample_rate IS NULL THEN aggregated ELSE '{}'::text[] END AS aggregated,
       CASE WHEN sample_rate IS NULL THEN dropped ELSE '{}'::text[] END AS dropped,
       rejected, accuracy, loss, train_loss, num_examples, bytes_up, bytes_down, duration_s,
       opened_at, closed_at, failure, epsilon_spent, noise_multiplier, sample_rate
FROM rounds;
