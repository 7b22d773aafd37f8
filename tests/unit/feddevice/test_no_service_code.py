"""The runtime is what a device installs: it must not need the services' code or their
dependencies (a database driver, metrics, JWT, a web server), at install or at import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVICE_ONLY = ("psycopg", "psycopg_pool", "prometheus_client", "jwt", "fastapi", "uvicorn")


def test_importing_the_runtime_loads_no_service_code_or_dependency() -> None:
    probe = (
        "import sys, feddevice.command, feddevice.runtime, feddevice.torch_client\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert not loaded & set(SERVICE_ONLY)
    assert not {m for m in loaded if m.startswith("fedengine")}
    # The SecAgg+ protocol is fedprivacy's, with numpy and cryptography; its accountant is not.
    assert not loaded & {"dp_accounting", "scipy", "opacus", "sklearn"}


def test_the_packages_it_depends_on_carry_no_service_dependency() -> None:
    device = tomllib.loads((ROOT / "libs/feddevice/pyproject.toml").read_text())
    common = tomllib.loads((ROOT / "libs/fedcommon/pyproject.toml").read_text())
    for requirement in device["project"]["dependencies"] + common["project"]["dependencies"]:
        name = requirement.split("[")[0].split("=")[0].split(">")[0].strip().replace("-", "_")
        assert name not in SERVICE_ONLY and not name.startswith("fedengine"), requirement
    assert "psycopg" in " ".join(common["project"]["optional-dependencies"]["service"])
