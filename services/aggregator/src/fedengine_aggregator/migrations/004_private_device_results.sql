-- Updates of a DP round (issue 9): kept for the aggregator's own audit, but nothing per device
-- of a DP round is published (who took part, example counts, losses would leak un-noised), so
-- the public view leaves them out; its columns stay as they were.
-- (The outbox that a round's result goes through is every schema's: fedcommon.db creates it.)
ALTER TABLE device_results ADD COLUMN IF NOT EXISTS private boolean NOT NULL DEFAULT false;
CREATE OR REPLACE VIEW device_results_public AS
SELECT task_id, round_id, round_number, device_id, status, reason, num_examples, train_loss,
       train_accuracy
FROM device_results
WHERE NOT private;
