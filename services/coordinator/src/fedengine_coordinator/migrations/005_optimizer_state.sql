-- A server optimizer's state (FedAvgM's momentum, FedAdam's moments: fedcommon.server_opt,
-- serialised with fedcommon.arrays) lives with the model version it produced, written in the
-- same transaction, so a coordinator that stops between rounds resumes from exactly that
-- state. NULL: the task's strategy has no server optimizer, or the version is the first.
ALTER TABLE models ADD COLUMN IF NOT EXISTS optimizer_state bytea;
