-- The send time of the enrolment in force: an older one replayed later changes nothing.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS enrolled_sent_at timestamptz;
