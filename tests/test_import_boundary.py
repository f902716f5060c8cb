"""The pure core ``wsca_lightning.wsc`` (tensors in, tensors out) imports neither Lightning nor Hydra: it can be used
from any training loop, and the layers above it may depend on it, never the other way round."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import wsca_lightning.wsc

FORBIDDEN = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
CORE_MODULES = ["wsca_lightning.wsc", *(f"wsca_lightning.wsc.{m.name}"
                                       for m in pkgutil.iter_modules(wsca_lightning.wsc.__path__))]


def frameworks_loaded_by(modules: list[str]) -> dict[str, list[str]]:
    """For each of ``modules``, imported in turn in one fresh interpreter, the Lightning / Hydra modules in
    ``sys.modules`` right after it (one interpreter: importing torch once per module would take seconds each)."""
    code = (
        "import importlib, json, sys\n"
        "loaded = {}\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"    loaded[module] = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_core_imports_neither_lightning_nor_hydra():
    assert len(CORE_MODULES) > 3  # the package and its modules were found
    assert frameworks_loaded_by(CORE_MODULES) == {module: [] for module in CORE_MODULES}
