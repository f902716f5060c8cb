"""The built wheel in a fresh virtual environment with no extras runs the default `wsca-train` from any directory
(its configs ship inside the wheel).

The fresh environment gets the wheel (installed by pip, with its console scripts) and exactly the distributions its
core requirements need, followed transitively from the wheel's own ``Requires-Dist`` metadata (extras left out). They
are linked from this test environment (a ``.pth`` file naming a directory of links) instead of downloaded, so the test
needs no network and takes seconds; ``pip check`` then confirms the fresh environment satisfies every requirement.
A module the package imports without declaring it, or an extra the default run needs, fails the run.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import wsca_lightning

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = ["data.image_size=[32,48]", "data.num_train=64", "data.num_val=32", "trainer.max_epochs=1",
             "callbacks.wsc.subset_size=60", "callbacks.wsc.num_permutations=20", "callbacks.wsc.num_bootstrap=50",
             "trainer.enable_progress_bar=false"]


def core_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's requirements that hold without any extra, on this platform."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    requirements = [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
                    if line.startswith("Requires-Dist:")]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution these requirements need, transitively (with the extras they ask for)."""
    found: dict[str, metadata.Distribution] = {}
    queue = list(requirements)
    while queue:
        requirement = queue.pop()
        key = canonicalize_name(requirement.name)
        dist = metadata.distribution(requirement.name)  # PackageNotFoundError: this environment lacks it too
        assert dist.version in requirement.specifier or not requirement.specifier, (requirement, dist.version)
        first = key not in found
        found[key] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = [""] + sorted(requirement.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                if first or requirement.extras:
                    queue.append(sub)
    return found


def link_distributions(dists: dict[str, metadata.Distribution], view: Path) -> None:
    """Symlink each distribution's top-level entries (packages, modules, .dist-info, bundled libraries) into
    ``view``."""
    view.mkdir()
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            target = base / top
            if target.exists() and not (view / top).exists():
                (view / top).symlink_to(target)


@pytest.mark.slow
def test_the_wheel_without_extras_runs_the_default_command_from_another_directory(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("wsca_lightning-*.whl")
    dists = closure(core_requirements(wheel))
    assert "matplotlib" in dists  # figures are part of the default output
    link_distributions(dists, tmp_path / "core")

    env_dir = tmp_path / "fresh"
    # without pip: its bundled setuptools would shadow the linked one; this environment's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    fresh_pip = [*pip, "--python", str(python)]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "core.pth").write_text(f"{tmp_path / 'core'}\n")
    subprocess.run([*fresh_pip, "install", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    check = subprocess.run([*fresh_pip, "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    # no extra is there: not the test tools, not tensorboard, not mlflow
    probe = "import importlib.util as u; print([m for m in ('pytest', 'tensorboard', 'mlflow') if u.find_spec(m)])"
    assert subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = tmp_path / "run"
    proc = subprocess.run([str(env_dir / "bin" / "wsca-train"), f"hydra.run.dir={run}", *SMALL_RUN], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = subprocess.run([str(python), "-c", "import wsca_lightning; print(wsca_lightning.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(purelib)  # the installed wheel, not the checkout
    summary = run / "wsc" / "wsc_summary.json"
    assert f"WSC summary: {summary}" in proc.stdout and "scanner" in proc.stdout
    assert (run / ".hydra" / "config.yaml").exists()
    assert json.loads(summary.read_text())["wsca_lightning_version"] == wsca_lightning.__version__
    assert [p.name for p in (run / "wsc" / "heatmaps").glob("*.png")] == ["epoch_0000.png"]
    assert (run / "wsc" / "wsc_over_epochs.png").stat().st_size > 0


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    """setuptools ships only the packages pyproject.toml lists: a new subpackage left out installs without it (the
    wheel test above would catch it too, but only in the slow run)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    source = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "wsca_lightning").rglob("__init__.py")}
    assert source - {"wsca_lightning.conf"} <= listed, sorted(source - listed)
    assert "wsca_lightning.conf" in listed  # conf/ ships as wsca_lightning.conf (package-dir)
