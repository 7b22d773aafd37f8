"""Malicious devices: who attacks is reproducible from the fleet seed; each attack sends what it
says (sign flip, Gaussian noise, a delta trained on flipped labels) and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import SecretStr, ValidationError

from fedcommon import datasets, enrolment_tokens, models, signing
from fedcommon.messages.v1 import ModelArchitecture
from feddevice.torch_training import train_local
from fedengine_simulator.core import attacks
from fedengine_simulator.core.attacks import Attack, AttackKind
from fedengine_simulator.settings import Settings


def _delta() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.standard_normal((4, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
    ]


@pytest.mark.parametrize(
    ("devices", "fraction", "count"),
    [(20, 0.2, 4), (6, 0.2, 1), (100, 0.29, 29), (10, 0.0, 0), (7, 1.0, 7), (3, 0.3, 0)],
)
def test_the_attacker_count_is_the_fraction_rounded_down(
    devices: int, fraction: float, count: int
) -> None:
    # Execute
    chosen = attacks.choose_attackers(devices, fraction, attacks.attackers_rng(0))

    # Assert
    assert attacks.attacker_count(devices, fraction) == count
    assert len(chosen) == count and all(0 <= i < devices for i in chosen)


def test_the_attackers_follow_the_fleet_seed() -> None:
    # Execute
    first = attacks.choose_attackers(100, 0.2, attacks.attackers_rng(5))
    again = attacks.choose_attackers(100, 0.2, attacks.attackers_rng(5))
    other = attacks.choose_attackers(100, 0.2, attacks.attackers_rng(6))

    # Assert: the same seed makes the same attackers; another seed (almost surely) others.
    assert first == again
    assert first != other


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        attacks.attacker_count(10, fraction)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_a_scale_that_is_not_a_positive_finite_number_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        Attack(AttackKind.GAUSSIAN, scale)


def test_sign_flip_sends_minus_scale_times_the_honest_delta() -> None:
    # Prepare
    delta = _delta()
    kept = [d.copy() for d in delta]

    # Execute
    sent = attacks.poison(delta, Attack(AttackKind.SIGN_FLIP, 3.0), np.random.default_rng(0))

    # Assert
    for out, honest, before in zip(sent, delta, kept, strict=True):
        assert out.dtype == np.float32 and out.shape == honest.shape
        np.testing.assert_allclose(out, -3.0 * honest)
        np.testing.assert_array_equal(honest, before)  # the input is left alone


def test_gaussian_sends_noise_of_the_scale_as_deviation_unrelated_to_the_delta() -> None:
    # Prepare: a large delta, so that the sample statistics are tight.
    delta = [np.full((200, 100), 50.0, dtype=np.float32), np.full(500, -50.0, dtype=np.float32)]

    # Execute
    sent = attacks.poison(delta, Attack(AttackKind.GAUSSIAN, 2.0), np.random.default_rng(1))
    again = attacks.poison(delta, Attack(AttackKind.GAUSSIAN, 2.0), np.random.default_rng(1))

    # Assert: N(0, 2²) per coordinate, of the delta's shapes; the same generator, the same draw.
    assert [s.shape for s in sent] == [d.shape for d in delta]
    assert all(s.dtype == np.float32 for s in sent)
    values = np.concatenate([s.ravel() for s in sent])
    assert abs(float(values.mean())) < 0.05
    assert abs(float(values.std()) - 2.0) < 0.05
    for a, b in zip(sent, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_update_generator_differs_per_round_and_device_and_repeats_for_a_retry() -> None:
    def draw(round_number: int, device_index: int) -> float:
        rng = attacks.update_rng(
            fleet_seed=0, task_seed=7, round_number=round_number, device_index=device_index
        )
        return float(rng.standard_normal())

    assert draw(1, 2) == draw(1, 2)
    assert len({draw(1, 2), draw(2, 2), draw(1, 3)}) == 3


def test_label_flip_maps_each_label_to_its_mirror_class() -> None:
    # Prepare
    labels = np.arange(10, dtype=np.int64)

    # Execute
    flipped = attacks.flip_labels(labels, 10, Attack(AttackKind.LABEL_FLIP))
    untouched = attacks.flip_labels(labels, 10, Attack(AttackKind.SIGN_FLIP))

    # Assert
    np.testing.assert_array_equal(flipped, 9 - labels)
    assert flipped.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(10))
    assert untouched is labels


def test_label_flip_refuses_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        attacks.flip_labels(np.array([0, 10]), 10, Attack(AttackKind.LABEL_FLIP))


def test_label_flip_sends_the_scaled_delta_of_training_on_flipped_labels() -> None:
    # Prepare: the same device trains honestly and on flipped labels from the same start.
    data = datasets.load_dataset("digits")
    x, y = data.x_train[:200], data.y_train[:200]
    attack = Attack(AttackKind.LABEL_FLIP, 2.0)

    def train(labels: np.ndarray) -> list[np.ndarray]:
        model = models.build_model(
            ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=10, seed=0
        )
        return train_local(
            model, x, labels, epochs=3, batch_size=16, learning_rate=0.3, seed=1
        ).delta

    # Execute
    honest = train(y)
    flipped = train(attacks.flip_labels(y, data.num_classes, attack))
    sent = attacks.poison(flipped, attack, np.random.default_rng(0))

    # Assert: what it sends is twice its flipped-label delta, and that delta teaches the
    # mirrored classes: it scores the true labels far worse than honest training does.
    for out, d in zip(sent, flipped, strict=True):
        np.testing.assert_allclose(out, 2.0 * d, rtol=1e-6)

    def accuracy(delta: list[np.ndarray], labels: np.ndarray) -> float:
        model = models.build_model(
            ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=10, seed=0
        )
        start = models.get_arrays(model)
        models.set_arrays(model, [s + d for s, d in zip(start, delta, strict=True)])
        with torch.no_grad():
            predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
        return float((predicted == labels).mean())

    # (Measured: 0.68 and 0.02 on the true labels, 0.65 for the flipped model on the mirror.)
    assert accuracy(honest, y) > 0.5
    assert accuracy(flipped, 9 - y) > 0.5
    assert accuracy(flipped, y) < 0.1


def test_the_simulator_takes_the_attack_from_its_settings() -> None:
    # Prepare
    token = enrolment_tokens.issue(
        "f", coordinator_key=signing.public_key_bytes(signing.generate_private_key())
    )
    common = {"postgres": {"DATABASE_URL": "postgresql://unused"}, "fleet": "f"}

    # Execute
    settings = Settings(
        **common,  # type: ignore[arg-type]
        enrolment_token=SecretStr(token.encode()),
        malicious=0.25,
        attack="gaussian",
        attack_scale=0.5,
    )
    default = Settings(**common, enrolment_token=SecretStr(token.encode()))  # type: ignore[arg-type]

    # Assert
    assert settings.malicious == 0.25
    assert settings.attack_spec == Attack(AttackKind.GAUSSIAN, 0.5)
    assert default.malicious == 0.0
    for bad in ({"malicious": 1.5}, {"attack": "backdoor"}, {"attack_scale": 0}):
        with pytest.raises(ValidationError):
            Settings(**common, enrolment_token=SecretStr(token.encode()), **bad)  # type: ignore[arg-type]
