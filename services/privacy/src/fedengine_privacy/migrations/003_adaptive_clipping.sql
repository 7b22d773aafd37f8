-- Adaptive clipping (Andrew et al. 2021; core/adaptive_clipping.py): a budget keeps its
-- settings, a release its own C and how z was split between the updates' sum and the noised
-- unclipped count (the ledger accounts z: both together cost one Gaussian release at z).
-- Also: a budget row may change in one way only, its exhaustion being stamped once.

ALTER TABLE budgets ADD COLUMN adaptive_clipping jsonb;

ALTER TABLE releases DROP CONSTRAINT releases_mechanism_check;
ALTER TABLE releases ADD CONSTRAINT releases_mechanism_check
    CHECK (mechanism IN ('subsampled_gaussian', 'subsampled_gaussian_adaptive_clip'));
ALTER TABLE releases ADD COLUMN update_noise_multiplier float8
    CHECK (update_noise_multiplier > 0);
ALTER TABLE releases ADD COLUMN count_noise_std float8 CHECK (count_noise_std > 0);
ALTER TABLE releases ADD CONSTRAINT releases_adaptive_split CHECK (
    (mechanism = 'subsampled_gaussian'
        AND update_noise_multiplier IS NULL AND count_noise_std IS NULL)
    OR (mechanism = 'subsampled_gaussian_adaptive_clip'
        AND update_noise_multiplier >= noise_multiplier AND count_noise_std > 0)
);

CREATE FUNCTION budgets_stamp_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.exhausted_at IS NULL AND NEW.exhausted_at IS NOT NULL
       AND (NEW.task_id, NEW.epsilon_budget, NEW.delta, NEW.accountant, NEW.clip_norm,
            NEW.noise_multiplier, NEW.calibrated, NEW.planned_rounds, NEW.created_at)
           IS NOT DISTINCT FROM
           (OLD.task_id, OLD.epsilon_budget, OLD.delta, OLD.accountant, OLD.clip_norm,
            OLD.noise_multiplier, OLD.calibrated, OLD.planned_rounds, OLD.created_at)
       AND NEW.adaptive_clipping IS NOT DISTINCT FROM OLD.adaptive_clipping THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'privacy.budgets: only exhausted_at may change, once: % refused', TG_OP;
END
$$;

CREATE TRIGGER budgets_fixed BEFORE UPDATE ON budgets
    FOR EACH ROW EXECUTE FUNCTION budgets_stamp_only();
CREATE TRIGGER budgets_no_delete BEFORE DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER budgets_no_truncate BEFORE TRUNCATE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE OR REPLACE VIEW budgets_public AS
SELECT b.task_id, b.epsilon_budget, b.delta, b.accountant, b.clip_norm, b.noise_multiplier,
       b.calibrated, b.planned_rounds,
       COALESCE(spent.epsilon_spent, 0)::float8 AS epsilon_spent,
       COALESCE(spent.releases, 0)::integer AS releases,
       b.exhausted_at, b.created_at, b.adaptive_clipping
FROM budgets b
LEFT JOIN LATERAL (
    SELECT max(r.epsilon_after) AS epsilon_spent, count(*) AS releases
    FROM releases r WHERE r.task_id = b.task_id
) spent ON true;

CREATE OR REPLACE VIEW releases_public AS
SELECT approval_id, task_id, round_id, round_number, attempt, mechanism, noise_multiplier,
       sample_rate, steps, clip_norm, epsilon_after, delta, accountant, released_at,
       update_noise_multiplier, count_noise_std
FROM releases;
