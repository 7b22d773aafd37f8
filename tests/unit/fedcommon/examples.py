"""One example instance per message type (the checked-in JSON examples are made from these)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import numpy as np

from fedcommon import arrays
from fedcommon.messages import v1

T = UUID("11111111-1111-4111-8111-111111111111")
R = UUID("22222222-2222-4222-8222-222222222222")
M = UUID("33333333-3333-4333-8333-333333333333")
WHEN = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))
SIG = bytes(range(64))
DELTA = arrays.to_bytes([np.ones((2, 3), np.float32), np.zeros(3, np.float32)])
base = {"message_id": M, "sent_at": WHEN, "producer": "example"}

LOCAL_DP = v1.LocalDp(
    level=v1.PrivacyLevel.MEDIUM,
    noise_multiplier=1.1,
    sample_rate=0.1,
    steps=50,
    max_grad_norm=1.0,
    epsilon_budget=3.0,
    delta=1e-5,
)

SECAGG = v1.RoundSecAgg(
    bits=16,
    clip_norm=10.0,
    weight_cap=1000,
    degree=2,
    threshold=2,
    graph_seed=bytes(range(32)),
    stage_timeout_s=30.0,
)
EXAMPLES: list[v1.Envelope] = [
    v1.DeviceEnrolled(
        **base,
        device_id="dev-1",
        device_name="phone",
        device_type=v1.DeviceType.MOBILE,
        privacy_level=v1.PrivacyLevel.HIGH,
        public_key=KEY,
        fleet="f",
        enrolment_token_id=T,
        token_signature=SIG,
        signature=SIG,
    ),
    v1.HeartbeatSent(**base, device_id="dev-1", sequence=7, battery_pct=55.5, signature=SIG),
    v1.DeviceRemoved(**base, device_id="dev-1", issued_by="admin"),
    v1.DeviceRestored(**base, device_id="dev-1", issued_by="admin"),
    v1.EnrolmentTokenIssued(
        **base,
        token_id=T,
        fleet="f",
        public_key=KEY,
        expires_at=WHEN,
        max_devices=100,
        issued_by="admin",
    ),
    v1.EnrolmentTokenRevoked(**base, token_id=T, issued_by="admin"),
    v1.TaskCreateRequested(
        **base, task_id=T, spec=v1.TaskSpec(task_name="t", devices_per_round=3), issued_by="op"
    ),
    v1.TaskStartRequested(**base, task_id=T, issued_by="op"),
    v1.TaskPauseRequested(**base, task_id=T, issued_by="op"),
    v1.TaskResumeRequested(**base, task_id=T, issued_by="op"),
    v1.TaskCancelRequested(**base, task_id=T, issued_by="op"),
    v1.CleanupRequested(**base, retention_s=3600, issued_by="admin"),
    v1.TrainRequested(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-1",
        round_number=1,
        model_version=0,
        model_sha256="ab" * 32,
        deadline=WHEN,
        model_architecture=v1.ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.3,
        local_epochs=5,
        batch_size=16,
        seed=0,
    ),
    v1.TrainRequested(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-2",
        round_number=1,
        model_version=0,
        model_sha256="ab" * 32,
        deadline=WHEN,
        model_architecture=v1.ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.3,
        local_epochs=5,
        batch_size=16,
        seed=0,
        local_dp=LOCAL_DP,
    ),
    v1.ModelPublished(**base, task_id=T, version=1, sha256="ab" * 32, size_bytes=100),
    v1.RoundOpened(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        model_version=0,
        participants=[v1.Participant(device_id="dev-1", public_key=KEY)],
        min_updates=1,
        deadline=WHEN,
        param_shapes=[[2, 3], [3]],
        max_update_norm=10.0,
    ),
    v1.RoundOpened(
        **base,
        round_id=R,
        task_id=T,
        round_number=2,
        attempt=1,
        model_version=1,
        participants=[v1.Participant(device_id=f"dev-{i}", public_key=KEY) for i in range(1, 4)],
        min_updates=3,
        deadline=WHEN,
        param_shapes=[[2, 3], [3]],
        max_update_norm=10.0,
        secure_aggregation=SECAGG,
    ),
    v1.TrainRequested(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-3",
        round_number=1,
        model_version=0,
        model_sha256="ab" * 32,
        deadline=WHEN,
        model_architecture=v1.ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.3,
        local_epochs=5,
        batch_size=16,
        seed=0,
        secure_aggregation=v1.SecAggAssignment(
            round=SECAGG,
            num_clients=3,
            index=2,
            dim=9,
            neighbours=[
                v1.SecAggPeer(index=i, device_id=f"dev-{i + 1}", public_key=KEY) for i in (0, 1)
            ],
        ),
    ),
    v1.UpdateSubmitted(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-1",
        round_number=1,
        model_version=0,
        num_examples=10,
        update=DELTA,
        metrics=v1.UpdateMetrics(train_loss=0.5, train_accuracy=0.9, duration_s=0.1),
        signature=SIG,
    ),
    v1.SecAggSubmitted(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-1",
        round_number=1,
        stage=1,
        payload=b"\x01\x01advert",
        signature=SIG,
    ),
    v1.SecAggDelivered(
        **base,
        round_id=R,
        task_id=T,
        device_id="dev-1",
        round_number=1,
        stage=3,
        payload=b"\x01\x03shares",
    ),
    v1.RoundAggregated(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        model_version=0,
        delta=DELTA,
        participants=["dev-1"],
        dropped=[],
        rejected={"duplicate": 1},
        num_examples=10,
        train_loss=0.5,
        bytes_up=len(DELTA),
        duration_s=0.2,
    ),
    v1.RoundFailed(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        reason="deadline",
        received=0,
        rejected={},
    ),
    v1.TaskStateChanged(
        **base, task_id=T, state=v1.TaskState.COMPLETED, stop_reason=v1.StopReason.MAX_ROUNDS
    ),
    v1.RoundStarted(
        **base, round_id=R, task_id=T, round_number=1, attempt=0, participants=["dev-1"]
    ),
    v1.RoundCompleted(
        **base, round_id=R, task_id=T, round_number=1, model_version=1, accuracy=0.9, loss=0.3
    ),
    v1.DeviceStatusChanged(**base, device_id="dev-1", status=v1.DeviceStatus.OFFLINE),
    v1.PrivacySpendRequested(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        budget=v1.PrivacySpec(epsilon=1.0, delta=1e-5, clip_norm=1.0, noise_multiplier=5.0),
        planned_rounds=10,
        sample_rate=0.5,
        on_behalf_of="alice",
    ),
    v1.LocalDpAssigned(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        planned_rounds=10,
        assignments=[v1.LocalDpAssignment(device_id="dev-2", settings=LOCAL_DP)],
    ),
    v1.PrivacySpendApproved(
        **base,
        round_id=R,
        task_id=T,
        round_number=1,
        attempt=0,
        approval_id=UUID("44444444-4444-4444-8444-444444444444"),
        noise_multiplier=5.0,
        sample_rate=0.5,
        clip_norm=1.0,
        epsilon_spent=0.12,
        epsilon_budget=1.0,
        delta=1e-5,
        accountant="rdp",
    ),
    v1.PrivacySpendRefused(
        **base,
        round_id=R,
        task_id=T,
        round_number=9,
        attempt=0,
        reason="budget_exhausted",
        detail="round 9 would spend epsilon 1.03 of 1",
        epsilon_spent=0.98,
        epsilon_budget=1.0,
    ),
    v1.PrivacyBudgetExhausted(
        **base,
        task_id=T,
        epsilon_spent=0.98,
        epsilon_budget=1.0,
        detail="round 9 would spend epsilon 1.03 of 1",
    ),
]
