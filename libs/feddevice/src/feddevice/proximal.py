"""FedProx's device-side part: the proximal term added to the local loss.

Paper: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (MLSys 2020), eq. (2):
a device minimises h(w) = F(w) + (μ/2)·‖w - wᵗ‖², where wᵗ is the global model the round
started from. The server side of FedProx is FedAvg. Pure torch, no I/O: the training step
adds ``proximal_term(model.parameters(), global_params, mu)`` to its loss before ``backward``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def snapshot(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``parameters``: the wᵗ to hold fixed for a round's local training."""
    return [p.detach().clone() for p in parameters]


def proximal_term(
    parameters: Iterable[torch.Tensor], global_params: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """Return (μ/2)·Σ‖w - wᵗ‖² as a scalar tensor that gradients flow through (to ``w`` only).

    Its gradient with respect to each w is μ·(w - wᵗ). μ = 0 gives a zero that still carries a
    graph, so callers need no special case.

    Raises ``ValueError`` if μ is negative or not finite, or the parameters do not match
    ``global_params`` in number or shape.
    """
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not 0.0 <= mu < float("inf"):
        raise ValueError(f"proximal_term: mu must be a finite number >= 0, got {mu!r}")
    params = list(parameters)
    if len(params) != len(global_params):
        raise ValueError(
            f"proximal_term: {len(params)} parameters but {len(global_params)} global ones"
        )
    total: torch.Tensor | None = None
    for w, w0 in zip(params, global_params, strict=True):
        if w.shape != w0.shape:
            raise ValueError(f"proximal_term: shape {tuple(w.shape)} != {tuple(w0.shape)}")
        squared = (w - w0.detach().to(w.dtype)).pow(2).sum()
        total = squared if total is None else total + squared
    if total is None:
        raise ValueError("proximal_term: no parameters")
    return 0.5 * float(mu) * total
