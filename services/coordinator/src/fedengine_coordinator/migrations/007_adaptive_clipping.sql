-- Adaptive clipping (issue 9; fedprivacy.adaptive_clipping). tasks.dp_clip_norm:
-- the C the task's next DP round is drawn with, moved after each round by its noised unclipped
-- fraction (NULL: the privacy section's clip_norm). rounds.clip_norm: the C a DP try asked for.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS dp_clip_norm double precision
    CHECK (dp_clip_norm > 0 AND dp_clip_norm < 'Infinity');
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS clip_norm double precision
    CHECK (clip_norm > 0 AND clip_norm < 'Infinity');

CREATE OR REPLACE VIEW rounds_public AS
SELECT task_id, round_number, attempt, status,
       CASE WHEN sample_rate IS NULL THEN participants ELSE '{}'::text[] END AS participants,
       CASE WHEN sample_rate IS NULL THEN aggregated ELSE '{}'::text[] END AS aggregated,
       CASE WHEN sample_rate IS NULL THEN dropped ELSE '{}'::text[] END AS dropped,
       rejected, accuracy, loss, train_loss, num_examples, bytes_up, bytes_down, duration_s,
       opened_at, closed_at, failure, epsilon_spent, noise_multiplier, sample_rate, clip_norm
FROM rounds;
