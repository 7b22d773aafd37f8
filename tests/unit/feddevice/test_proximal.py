"""FedProx's proximal term: value, gradient, and its effect on a training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from feddevice.proximal import proximal_term, snapshot


def test_golden_value_and_gradient() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    w0, b0 = torch.zeros(2), torch.tensor([[1.0]])

    term = proximal_term([w, b], [w0, b0], mu=0.5)
    term.backward()  # type: ignore[no-untyped-call]

    # (0.5 / 2) * ((1 + 4) + 4) = 2.25; gradient mu * (w - w0)
    assert term.item() == pytest.approx(2.25)
    assert w.grad is not None and b.grad is not None
    torch.testing.assert_close(w.grad, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(b.grad, torch.tensor([[1.0]]))


def test_mu_zero_is_zero_and_global_params_get_no_gradient() -> None:
    w = torch.ones(3, requires_grad=True)
    w0 = torch.zeros(3, requires_grad=True)
    term = proximal_term([w], [w0], mu=0.0)
    term.backward()  # type: ignore[no-untyped-call]

    assert term.item() == 0.0
    assert w0.grad is None


def test_a_training_step_is_pulled_towards_the_global_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    start = snapshot(model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # local training moved away from the global model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]

    loss = proximal_term(model.parameters(), start, mu=2.0)  # a data loss would be added here
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()

    # w <- w - lr * mu * (w - w0): each parameter moves 20% of the way back
    for p, b, s in zip(model.parameters(), before, start, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.2 * (b - s))


def test_bad_arguments_are_refused() -> None:
    w = torch.ones(2)
    with pytest.raises(ValueError, match="mu"):
        proximal_term([w], [w], mu=-0.1)
    with pytest.raises(ValueError, match="mu"):
        proximal_term([w], [w], mu=float("inf"))
    with pytest.raises(ValueError, match="1 parameters but 2"):
        proximal_term([w], [w, w], mu=0.1)
    with pytest.raises(ValueError, match="shape"):
        proximal_term([w], [torch.ones(3)], mu=0.1)
    with pytest.raises(ValueError, match="no parameters"):
        proximal_term([], [], mu=0.1)


def _local_delta_norm(mu: float) -> float:
    from fedcommon import datasets, models
    from fedcommon.messages.v1 import ModelArchitecture
    from feddevice.torch_training import train_local

    data = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=10, seed=0
    )
    result = train_local(
        model,
        data.x_train[:128],
        data.y_train[:128],
        epochs=5,
        batch_size=16,
        learning_rate=0.3,
        seed=3,
        proximal_mu=mu,
    )
    return float(sum(float((d.astype("float64") ** 2).sum()) for d in result.delta) ** 0.5)


def test_local_training_with_mu_stays_closer_to_the_round_s_model() -> None:
    # Prepare / Execute: the same data, seed and schedule, with and without the proximal term.
    plain, mild, strong = _local_delta_norm(0.0), _local_delta_norm(0.1), _local_delta_norm(1.0)

    # Assert: the term pulls the weights back towards wᵗ, more the larger μ is.
    assert strong < mild < plain
