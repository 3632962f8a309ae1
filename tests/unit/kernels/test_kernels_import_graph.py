"""potential.py depends on no file format and no device backend; they register with it.

model_file.py (.nnmd), sannp.py (ffield.sannp) and gpu/ (the "cuda" backend) import
potential.py, never the other way round, not even lazily inside a function; importing
nnmd_kernels registers them, so the public API is unchanged.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nnmd_kernels
from nnmd_kernels import Potential, potential

POTENTIAL_PY = Path(nnmd_kernels.__file__).with_name("potential.py")
FORBIDDEN = ("model_file", "sannp", "gpu")


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement anywhere in the tree names, as dotted text
    relative to nnmd_kernels ("from .gpu.device import x" -> "gpu.device", "gpu.device.x")."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{a.name}" if mod else a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            names += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("nnmd_kernels.", ".").split(".") if p]


def test_potential_py_imports_no_format_or_backend():
    tree = ast.parse(POTENTIAL_PY.read_text(), filename=str(POTENTIAL_PY))
    mods = _imported_modules(tree)
    assert mods, "the parser found no imports at all"
    bad = [m for m in mods if any(p in FORBIDDEN for p in _parts(m))]
    assert not bad, f"potential.py imports {bad}; formats and backends must register instead"


def test_import_graph_detector_catches_lazy_imports():
    """The check above sees imports inside methods (the old lazy form) too."""
    old = textwrap.dedent("""
        class Potential:
            def save(self, path):
                from .model_file import save_model
                return save_model(self, path)
            def compute(self):
                from .gpu import potential_cuda
                from . import sannp
    """)
    found = [m for m in _imported_modules(ast.parse(old)) if any(p in FORBIDDEN for p in _parts(m))]
    assert {"model_file", "gpu", "sannp"} <= {p for m in found for p in _parts(m)}


def test_formats_and_cuda_backend_are_registered():
    assert {"nnmd", "sannp"} <= set(potential._FORMATS)
    assert "cuda" in potential._BACKENDS and "cuda" in potential.backends()
    assert set(potential._CODEC) == {"to_dict", "from_dict", "content_hash"}


def test_unregistered_backend_and_format_give_clear_errors(monkeypatch, tmp_path):
    pot = Potential.random(["Si"], seed=0, n_radial=3, n_angular=2, r_radial=3.0, r_angular=3.0, hidden=(3,))
    pos = np.array([[0.0, 0, 0], [2.0, 0, 0]])
    monkeypatch.setattr(potential, "_BACKENDS", {})
    with pytest.raises(RuntimeError, match="import nnmd_kernels.gpu"):
        pot.compute(pos, [14, 14], backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        pot.compute(pos, [14, 14], backend="bogus")
    assert pot.compute(pos, [14, 14], backend="auto").energy == pot.compute(pos, [14, 14], backend="numpy").energy
    monkeypatch.setattr(potential, "_FORMATS", {})
    (tmp_path / "m.nnmd").write_text("{}")
    with pytest.raises(ValueError, match="no model file format is registered"):
        Potential.load(tmp_path / "m.nnmd")
    with pytest.raises(ValueError, match="no model file format is registered"):
        pot.save(tmp_path / "x.nnmd")
    with pytest.raises(FileNotFoundError):
        Potential.load(tmp_path / "missing.nnmd")


def test_public_api_loads_nnmd_and_sannp_in_a_fresh_interpreter(tmp_path):
    pot = Potential.random(["Li", "Ge"], seed=2, n_radial=4, n_angular=3, r_radial=3.5, r_angular=3.2,
                           hidden=(5, 5))
    digest = pot.save(tmp_path / "m.nnmd")
    pot.save(tmp_path / "ffield.sannp", format="sannp")
    pos = np.array([[0.0, 0, 0], [2.1, 0.3, 0], [0.2, 2.2, 0.4], [1.9, 1.8, 1.7]])
    nums = [3, 32, 3, 32]
    want = pot.compute(pos, nums).energy
    script = textwrap.dedent(f"""
        import sys
        from nnmd_kernels import Potential
        pos = {pos.tolist()!r}
        a = Potential.load({str(tmp_path / "m.nnmd")!r})
        b = Potential.load({str(tmp_path / "ffield.sannp")!r})
        assert a.content_hash == {digest!r}, a.content_hash
        assert b.metadata.get("imported_from") == "ffield.sannp"
        for p in (a, b):
            e = p.compute(pos, {nums!r}).energy
            assert abs(e - {want!r}) <= 1e-10 * abs({want!r}), (e, {want!r})
        # without a device, nothing device-side was imported to get here
        from nnmd_kernels.gpu.device import gpu_available
        if not gpu_available():
            assert "numba.cuda" not in sys.modules and "nnmd_kernels.gpu.potential_cuda" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
