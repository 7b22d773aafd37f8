"""What a process of the local stack does not import at start (issue 17: start-up and memory).

Each of these is imported where it is first needed instead: the supervisor's Kafka client only
to restart the broker, the privacy service's dp-accounting (with scipy) where it first computes
epsilon, the gateway's numpy and safetensors at the first model upload. A fresh interpreter
imports the entry module and reports which of them it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = (
    "import json, sys; import {module}; "
    "print(json.dumps(sorted(set(sys.argv[1:]) & {{m.partition('.')[0] for m in sys.modules}})))"
)


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("fedengine.supervisor", ("aiokafka", "torch", "numpy")),
        ("fedengine_privacy.__main__", ("dp_accounting", "scipy", "torch")),
        ("fedengine_gateway.__main__", ("numpy", "safetensors", "torch")),
    ],
)
def test_not_imported_at_start(module: str, absent: tuple[str, ...]) -> None:
    # Prepare / Execute
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module), *absent],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    # Assert
    assert json.loads(result.stdout) == [], f"{module} imported at start"
