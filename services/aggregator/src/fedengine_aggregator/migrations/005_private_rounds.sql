-- A closed round remembers whether it was a DP round (issue 9): an update that arrives after
-- its DP round closed (late) is marked private like the round's own updates, so that the
-- public view never shows who answered a DP round, however late.
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS private boolean NOT NULL DEFAULT false;
