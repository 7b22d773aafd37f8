-- Which device was asked to train on which model version: one row per (try, participant). The
-- gateway serves a model version to a device that fetches it as itself (signed with its own
-- key) only when a row here names them both.
-- A DP try's draw counts only once its spend was approved: one still awaiting it, or refused
-- while awaiting it, asked nobody (the rule of store.asks). Unlike rounds_public, this view
-- names a DP try's devices; the gateway only checks a signed device's own row against it and
-- never lists it.
CREATE OR REPLACE VIEW model_requests_public AS
SELECT r.task_id, r.round_id, r.round_number, r.attempt, p.device_id,
       r.model_version_in AS model_version, r.deadline, r.status
FROM rounds r
CROSS JOIN LATERAL unnest(r.participants) AS p(device_id)
WHERE r.sample_rate IS NULL OR r.approval_id IS NOT NULL;
