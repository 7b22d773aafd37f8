-- What other services may read of the aggregator (the gateway's update counts): this view,
-- never the tables (tests/unit/test_schema_boundaries.py checks every service's SQL). A change
-- to a table keeps its view's columns (PostgreSQL refuses to drop a column a view uses) or
-- changes the view here, in the owner's own migration, where the change is seen.
CREATE OR REPLACE VIEW device_results_public AS
SELECT task_id, round_id, round_number, device_id, status, reason, num_examples, train_loss,
       train_accuracy
FROM device_results;
