"""fedprivacy's promise to a process that only adds noise: numpy alone, no [accounting] extra.

The aggregator (and, later, a device runtime) imports `mechanisms` and `adaptive_clipping`
for clipping and noise; dp-accounting and scipy (the `[accounting]` extra) must load only in
`accounting`, `calibration` and `composition`, and fedprivacy never needs `fedcommon`. A
fresh interpreter with those packages blocked imports and runs the noise-only modules.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

# What a noise-only process does not install: the [accounting] extra, and everything that is
# not numpy (fedcommon brings pydantic, aiokafka, psycopg; the simulator brings torch).
BLOCKED = ("dp_accounting", "scipy", "fedcommon", "pydantic", "torch")

_PROBE = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    BLOCKED = set(sys.argv[1].split(","))


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked by the test: {name}", name=name)
            return None


    sys.meta_path.insert(0, Blocker())

    import numpy as np

    # numpy's own helpers (numpy.random loads a Cython module) belong to the baseline.
    np.random.default_rng(0).normal(0.0, 1.0, size=2)
    np.random.default_rng(0).laplace(0.0, 1.0, size=2)
    before = set(sys.modules)

    from fedprivacy import accountants, adaptive_clipping, mechanisms

    rng = np.random.default_rng(0)
    update = [np.ones(4, dtype=np.float32), np.ones((2, 2), dtype=np.float32)]
    clipped = mechanisms.clipped_sum([update, update], clip_norm=1.0)
    noised = mechanisms.noise_sum(clipped, noise_multiplier=1.0, clip_norm=1.0, rng=rng)
    engine = mechanisms.DifferentialPrivacyEngine(epsilon=0.5, delta=1e-5, rng=rng)
    engine.add_noise(engine.clip_gradients(update))
    mechanisms.DifferentialPrivacyEngine(epsilon=1.0, delta=1e-5, mechanism="laplace", rng=rng)
    z_update = adaptive_clipping.update_noise_multiplier(1.0, 2.0)
    fraction = adaptive_clipping.unclipped_fraction(
        0.5, count_std=2.0, expected_participants=10.0, rng=rng
    )
    adaptive_clipping.next_clip_norm(
        1.0, fraction, target_quantile=0.5, learning_rate=0.2, lowest=1e-6, highest=1e9
    )
    accountants.Accountant("rdp")

    loaded = {name.partition(".")[0] for name in set(sys.modules) - before}
    refused = []
    for module in ("fedprivacy.accounting", "fedprivacy.calibration", "fedprivacy.composition"):
        try:
            __import__(module)
        except ModuleNotFoundError as error:
            refused.append([module, error.name])
    print(json.dumps({
        # numpy's submodules (numpy.typing) are numpy: the one dependency.
        "added": sorted(loaded - set(sys.stdlib_module_names) - {"numpy"}),
        "refused": refused,
        "shapes": [list(a.shape) for a in noised],
    }))
    """
)


@functools.cache
def _probe() -> dict[str, list[object]]:
    completed = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, list[object]] = json.loads(completed.stdout)
    return result


def test_noise_and_adaptive_clipping_need_numpy_alone() -> None:
    # Execute: import and run the noise-only modules with the extra and fedcommon blocked.
    result = _probe()

    # Assert: they ran, and loaded nothing but numpy and fedprivacy itself.
    assert result["shapes"] == [[4], [2, 2]]
    assert result["added"] == ["fedprivacy"]


def test_the_accountant_modules_need_the_accounting_extra() -> None:
    # Execute
    result = _probe()

    # Assert: the blocker works (else the test above proves nothing), and each accounting
    # module fails on a package of the extra, not on fedcommon or anything else.
    assert result["refused"] == [
        ["fedprivacy.accounting", "dp_accounting"],
        ["fedprivacy.calibration", "dp_accounting"],
        ["fedprivacy.composition", "scipy"],
    ]
