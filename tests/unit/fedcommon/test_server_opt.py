"""Server optimizers: golden steps from the papers' rules, state that survives a reload."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcommon.server_opt import (
    FLOAT32_MAX,
    Adagrad,
    Adam,
    Momentum,
    OptimizerState,
    ServerOptimizer,
    Yogi,
)

SHAPES = [[2, 3], [1]]


def run(optimizer: ServerOptimizer, x0: float, deltas: list[float]) -> list[float]:
    """Scalar model: the model after each delta."""
    state = optimizer.initial_state([[1]])
    model = [np.array([x0], np.float32)]
    seen = []
    for delta in deltas:
        step = optimizer.step(model, [np.array([delta], np.float32)], state)
        model, state = step.model, step.state
        seen.append(float(model[0][0]))
    assert state.step == len(deltas)
    return seen


def test_golden_fedavgm() -> None:
    # v1 = 0.9*0 + 2 = 2, x1 = 1 + 0.5*2 = 2; v2 = 0.9*2 - 1 = 0.8, x2 = 2 + 0.5*0.8 = 2.4
    np.testing.assert_allclose(run(Momentum(lr=0.5, momentum=0.9), 1.0, [2.0, -1.0]), [2.0, 2.4])


def test_fedavgm_without_momentum_and_unit_lr_is_plain_fedavg() -> None:
    np.testing.assert_allclose(run(Momentum(lr=1.0, momentum=0.0), 1.0, [2.0, -3.0]), [3.0, 0.0])


def test_golden_fedadam() -> None:
    # m1 = 0.1, v1 = 0.01, x1 = 0.1*0.1/(0.1 + 0.1) = 0.05
    # m2 = 0.09 - 0.1 = -0.01, v2 = 0.0099 + 0.01 = 0.0199, x2 = 0.05 - 0.001/(√0.0199 + 0.1)
    expected = [0.05, 0.05 - 0.001 / (math.sqrt(0.0199) + 0.1)]
    got = run(Adam(eta=0.1, beta1=0.9, beta2=0.99, tau=0.1), 0.0, [1.0, -1.0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_golden_fedyogi() -> None:
    # v1 = 0 - 0.01*1*sign(0 - 1) = 0.01 (as Adam), x1 = 0.05
    # v2 = 0.01 - 0.01*1*sign(0.01 - 1) = 0.02 (Adam: 0.0199), m2 = -0.01
    # Δ3 = 0.05: v3 = 0.02 - 0.01*0.0025*sign(0.02 - 0.0025) = 0.019975 (v shrinks slowly)
    #            m3 = 0.9*(-0.01) + 0.1*0.05 = -0.004
    x2 = 0.05 - 0.001 / (math.sqrt(0.02) + 0.1)
    x3 = x2 + 0.1 * -0.004 / (math.sqrt(0.019975) + 0.1)
    got = run(Yogi(eta=0.1, beta1=0.9, beta2=0.99, tau=0.1), 0.0, [1.0, -1.0, 0.05])
    np.testing.assert_allclose(got, [0.05, x2, x3], rtol=1e-6)


def test_golden_fedadagrad() -> None:
    # beta1 = 0: m = Δ. v1 = 1, x1 = 0.1/(1 + 0.1); v2 = 2, x2 = x1 - 0.1/(√2 + 0.1)
    x1 = 0.1 / 1.1
    got = run(Adagrad(eta=0.1, beta1=0.0, tau=0.1), 0.0, [1.0, -1.0])
    np.testing.assert_allclose(got, [x1, x1 - 0.1 / (math.sqrt(2) + 0.1)], rtol=1e-6)


OPTIMIZERS: list[ServerOptimizer] = [
    Momentum(lr=0.7, momentum=0.9),
    Adam(eta=0.05),
    Yogi(eta=0.05),
    Adagrad(eta=0.05, beta1=0.5),
]
layer = hnp.arrays(np.float32, (2, 3), elements=st.floats(-100, 100, width=32))
bias = hnp.arrays(np.float32, (1,), elements=st.floats(-100, 100, width=32))
rounds = st.lists(st.tuples(layer, bias).map(list), min_size=1, max_size=6)


@settings(max_examples=40)
@given(st.sampled_from(OPTIMIZERS), rounds, st.data())
def test_state_saved_and_reloaded_equals_a_straight_run(
    optimizer: ServerOptimizer, deltas: list[list[np.ndarray]], data: st.DataObject
) -> None:
    stops = set(data.draw(st.lists(st.integers(0, len(deltas)), max_size=3)))
    model0 = [np.zeros((2, 3), np.float32), np.ones(1, np.float32)]

    straight, resumed = model0, model0
    state_a = optimizer.initial_state(SHAPES)
    state_b = optimizer.initial_state(SHAPES)
    for index, delta in enumerate(deltas):
        if index in stops:  # a coordinator restart: only the stored bytes survive
            state_b = optimizer.load_state(state_b.to_bytes(), SHAPES)
        a = optimizer.step(straight, delta, state_a)
        b = optimizer.step(resumed, delta, state_b)
        straight, state_a, resumed, state_b = a.model, a.state, b.model, b.state

    assert [m.tobytes() for m in straight] == [m.tobytes() for m in resumed]
    assert state_a.to_bytes() == state_b.to_bytes()


@given(st.sampled_from(OPTIMIZERS), rounds)
def test_finite_inputs_give_finite_models_and_yogi_keeps_v_non_negative(
    optimizer: ServerOptimizer, deltas: list[list[np.ndarray]]
) -> None:
    model = [np.zeros((2, 3), np.float32), np.zeros(1, np.float32)]
    state = optimizer.initial_state(SHAPES)
    for delta in deltas:
        step = optimizer.step(model, delta, state)
        model, state = step.model, step.state
        assert all(np.isfinite(m).all() and m.dtype == np.float32 for m in model)
        if "v" in state.slots:
            assert all((v >= 0).all() for v in state.slots["v"])


def test_zero_deltas_never_divide_zero_by_zero() -> None:
    for optimizer in OPTIMIZERS:
        assert run(optimizer, 1.0, [0.0, 0.0]) == [1.0, 1.0]


def test_inputs_are_not_mutated() -> None:
    model, delta = [np.ones(1, np.float32)], [np.ones(1, np.float32)]
    state = Adam().initial_state([[1]])
    Adam().step(model, delta, state)
    assert model[0][0] == 1.0 and delta[0][0] == 1.0
    assert state.step == 0 and state.slots["m"][0][0] == 0.0


def test_a_step_that_overflows_float32_raises() -> None:
    top = [np.array([FLOAT32_MAX], np.float32)]
    optimizer = Momentum(lr=1.0, momentum=0.0)
    with pytest.raises(ValueError, match="overflows"):
        optimizer.step(top, top, optimizer.initial_state([[1]]))


def test_bad_state_is_refused() -> None:
    adam, yogi = Adam(), Yogi()
    state = adam.initial_state(SHAPES)
    model = [np.zeros((2, 3), np.float32), np.zeros(1, np.float32)]
    with pytest.raises(ValueError, match="belongs to 'fedadam'"):
        yogi.load_state(state.to_bytes(), SHAPES)
    with pytest.raises(ValueError, match="belongs to 'fedadam'"):
        yogi.step(model, model, state)
    with pytest.raises(ValueError, match="layout"):
        adam.load_state(state.to_bytes(), [[2, 3]])
    with pytest.raises(ValueError, match="wrong shapes"):
        adam.load_state(state.to_bytes(), [[3, 2], [1]])
    with pytest.raises(ValueError, match="optimizer state"):
        adam.load_state(b"garbage", SHAPES)
    nan = OptimizerState("fedadam", 1, {"m": [np.full((2, 3), np.nan), np.zeros(1)], "v": model})
    with pytest.raises(ValueError, match="not finite"):
        adam.step(model, model, nan)
    with pytest.raises(ValueError, match="shapes"):
        adam.step(model, [np.zeros((3, 2), np.float32), np.zeros(1, np.float32)], state)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Adam(beta1=1.0), "beta1"),
        (lambda: Adam(beta2=-0.1), "beta2"),
        (lambda: Yogi(tau=0.0), "tau"),
        (lambda: Adagrad(eta=0.0), "eta"),
        (lambda: Adam(eta=float("nan")), "eta"),
        (lambda: Adam(eta=True), "eta"),
        (lambda: Momentum(momentum=1.0), "momentum"),
        (lambda: Momentum(lr=-1.0), "lr"),
        (lambda: Momentum(lr=2e9), "lr"),
    ],
)
def test_parameters_out_of_range_are_refused(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]
