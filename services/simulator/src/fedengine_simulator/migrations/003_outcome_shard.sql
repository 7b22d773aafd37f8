-- Which of the fleet's processes handled each request (SIMULATOR_SHARD "i/n").
ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS shard text NOT NULL DEFAULT '0/1';
