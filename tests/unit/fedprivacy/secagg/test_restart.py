"""An aggregator restarted at any point of a round resumes with the same sum and decisions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.client import SecAggClient
from fedprivacy.secagg.errors import InvalidSecAggMessage, ThresholdNotMet
from fedprivacy.secagg.messages import Stage
from fedprivacy.secagg.server import SecAggServer
from tests.unit.fedprivacy.secagg.conftest import make_config


class Twin:
    """Feeds every call to an uninterrupted server and to one restored from bytes before
    the calls that ``restarts`` marks, and checks they answer the same."""

    def __init__(self, config: object, restarts: list[bool]) -> None:
        self.config = config
        self.plain = SecAggServer(config)  # type: ignore[arg-type]
        self.restarted = SecAggServer(config)  # type: ignore[arg-type]
        self.restarts = restarts
        self.calls = 0

    def __call__(self, name: str, *args: object) -> object:
        if self.restarts[self.calls % len(self.restarts)]:
            self.restarted = SecAggServer.restore(self.config, self.restarted.export_state())  # type: ignore[arg-type]
        self.calls += 1
        outcomes = []
        for server in (self.plain, self.restarted):
            try:
                outcomes.append(("ok", getattr(server, name)(*args)))
            except (InvalidSecAggMessage, ThresholdNotMet) as exc:
                outcomes.append(("error", str(exc)))
        (kind, plain), (_, restarted) = outcomes
        if name == "close_advertisement" and kind == "ok":
            plain, restarted = dict(plain), dict(restarted)  # type: ignore[call-overload]
        if name == "finish" and kind == "ok":
            assert np.array_equal(plain.total, restarted.total)  # type: ignore[attr-defined]
            assert plain.contributors == restarted.contributors  # type: ignore[attr-defined]
        else:
            assert outcomes[0] == (kind, restarted) and plain == restarted
        if kind == "error":
            raise InvalidSecAggMessage(str(plain))
        assert self.plain.export_state() == self.restarted.export_state()
        return plain


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(4, 9),
    drop=st.dictionaries(st.integers(0, 8), st.sampled_from(list(Stage)), max_size=2),
    restarts=st.lists(st.booleans(), min_size=1, max_size=7),
)
def test_export_and_restore_at_any_point_gives_the_uninterrupted_result(
    n: int, drop: dict[int, Stage], restarts: list[bool]
) -> None:
    config = make_config(n, 3)
    twin = Twin(config, restarts)
    clients = [SecAggClient(config, index=i) for i in range(n)]
    rng = np.random.default_rng(1)

    def sends(i: int, stage: Stage) -> bool:
        return drop.get(i, Stage.UNMASKING + 1) > stage

    try:
        for c in clients:
            if sends(c.index, Stage.ADVERTISE_KEYS):
                twin("receive_advertisement", c.advertise_keys())
        store: dict[int, list[tuple[int, bytes]]] = {}
        for device, adverts in twin("close_advertisement").items():  # type: ignore[attr-defined]
            if sends(device, Stage.SHARE_KEYS):
                shares = clients[device].share_keys(adverts)
                twin("receive_encrypted_shares", shares)
                for recipient, ct in shares.ciphertexts:
                    store.setdefault(recipient, []).append((device, ct))
        shared = twin("close_share_keys")
        for i in sorted(shared):  # type: ignore[call-overload]
            if sends(i, Stage.MASKED_INPUT):
                inbox = [(s, ct) for s, ct in store.get(i, []) if s in shared]  # type: ignore[operator]
                masked = clients[i].masked_input(
                    inbox, np.ones(3, dtype=np.float32) * 0.1, num_examples=2, rng=rng
                )
                twin("receive_masked_input", masked)
        request = twin("close_masked_input")
        for i in request.survivors:  # type: ignore[attr-defined]
            if sends(i, Stage.UNMASKING):
                twin("receive_unmasking", clients[i].unmask(request))  # type: ignore[arg-type]
        twin("finish")
    except (InvalidSecAggMessage, ThresholdNotMet):
        pass  # both servers failed the same way (checked in Twin)


def test_state_of_another_round_or_tampered_is_refused() -> None:
    config = make_config(5, 3)
    server = SecAggServer(config)
    server.receive_advertisement(SecAggClient(config, index=0).advertise_keys())
    state = server.export_state()
    assert SecAggServer.restore(config, state).export_state() == state
    with pytest.raises(InvalidSecAggMessage, match="another round"):
        SecAggServer.restore(dataclasses.replace(config, round_number=8), state)
    for bad in (state[:-1], state + b"\x00", b"XXXX" + state[4:]):
        with pytest.raises(InvalidSecAggMessage):
            SecAggServer.restore(config, bad)
