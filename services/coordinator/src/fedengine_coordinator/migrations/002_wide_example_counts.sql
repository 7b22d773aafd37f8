-- A round's example count is a sum over up to devices_per_round updates, each capped at
-- fedcommon.constraints.MAX_EXAMPLES_PER_UPDATE: it needs a bigint.
ALTER TABLE rounds ALTER COLUMN num_examples TYPE bigint;
