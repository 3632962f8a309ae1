"""No import circle among services/reference/{client,pool,service,spec}.py (issue 18): a
client needs no service module, the spec no client. Each module is imported in a fresh
interpreter and the reference modules it loaded are listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LAYER = ("client", "pool", "service", "spec")
# module -> the modules of LAYER it must not load
FORBIDDEN = {
    "client": {"service", "spec", "pool"},
    "spec": {"client", "service", "pool"},
    "pool": {"client", "service"},
    "service": {"client", "pool"},
}


def _loaded(module: str) -> set[str]:
    code = (f"import sys, json; import services.reference.{module}; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith('services.reference.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return {m.rsplit(".", 1)[1] for m in json.loads(out.stdout.splitlines()[-1])}


@pytest.mark.parametrize("module", LAYER)
def test_module_loads_no_module_above_it(module):
    loaded = _loaded(module)
    assert module in loaded
    assert not loaded & FORBIDDEN[module], f"{module} loads {sorted(loaded & FORBIDDEN[module])}"


def test_service_and_client_share_the_trailer():
    from services.reference import client, service, wire

    assert service.failures_of is wire.failures_of  # still importable from the service
    assert client.failures_of is wire.failures_of
