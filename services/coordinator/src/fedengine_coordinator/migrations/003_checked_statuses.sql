-- Statuses are closed sets (fedcommon.messages.v1.TaskState and StopReason,
-- fedengine_coordinator.core.state.RoundStatus): the database refuses any other value, so a
-- typo or a stale writer fails its transaction instead of leaving a row no reader knows.
-- tests/unit/coordinator/test_state.py keeps these lists equal to the enums.
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('created', 'running', 'paused', 'completed', 'cancelled', 'failed'));
ALTER TABLE tasks ADD CONSTRAINT tasks_stop_reason_check
    CHECK (stop_reason IN ('max_rounds', 'error', 'target_accuracy', 'converged',
                           'too_few_devices', 'round_failed', 'cancelled'));
ALTER TABLE rounds ADD CONSTRAINT rounds_status_check
    CHECK (status IN ('open', 'completed', 'failed', 'abandoned'));
