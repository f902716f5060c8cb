"""The manifest datamodule's progress bars over the images and segmentation maps it decodes before training (in
``prepare_data``): shown on a terminal (stderr), silent in logs and CI, absent when nothing is decoded
(``check_images: false``, the constructor, or ``setup`` on a rank that did not prepare the data)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsca_lightning.data.manifest_datamodule import ManifestDataModule

ROWS = 8
BARS = ("checking images", "checking segmentation maps")


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 rows of 20 x 20 PNG images, each with a .npy of 2 segmentation maps."""
    root = tmp_path_factory.mktemp("progress")
    rng = np.random.default_rng(0)
    lines = ["image,label,seg"]
    for row in range(ROWS):
        Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8)).save(root / f"{row}.png")
        np.save(root / f"{row}.npy", rng.uniform(0, 1, size=(2, 20, 20)).astype(np.float32))
        lines.append(f"{row}.png,{'ab'[row % 2]},{row}.npy")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def _datamodule(root: Path, check_images: bool) -> ManifestDataModule:
    return ManifestDataModule(manifest=str(root / "manifest.csv"), root=str(root), image_size=(16, 16),
                              in_channels=3, channels={"segmentation": {"column": "seg", "num_maps": 2}},
                              val_fraction=0.25, test_fraction=0.0, check_images=check_images)


def _prepared(root: Path, check_images: bool) -> ManifestDataModule:
    """What ``wsca-train`` does before training: the data check, then the datasets."""
    dm = _datamodule(root, check_images)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_bar_on_a_terminal_while_maps_are_decoded(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for check_images in (True, False):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        _prepared(manifest, check_images)
        shown = terminal.getvalue()
        for desc in BARS:
            if check_images:
                assert f"{desc}: 100%" in shown and f" {ROWS}/{ROWS} " in shown, shown
            else:
                assert desc not in shown, shown


def test_no_bar_off_a_terminal(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _prepared(manifest, check_images=True)
    err = capsys.readouterr().err
    assert not any(desc in err for desc in BARS), err


def test_nothing_is_decoded_outside_prepare_data(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dm = _datamodule(manifest, check_images=True)  # configuration only
    assert not any(desc in terminal.getvalue() for desc in BARS), terminal.getvalue()
    dm.setup("fit")  # a rank that did not prepare the data reads the table, decodes nothing
    assert not any(desc in terminal.getvalue() for desc in BARS), terminal.getvalue()
    assert len(dm.train_dataset) + len(dm.val_dataset) == ROWS


def test_prepare_data_decodes_once_also_after_pickling(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import wsca_lightning.data.manifest as manifest_module

    reads: list[str] = []
    check_image = manifest_module.check_image
    monkeypatch.setattr(manifest_module, "check_image", lambda path: reads.append(path) or check_image(path))
    dm = _datamodule(manifest, check_images=True)
    dm.prepare_data()
    assert len(reads) == ROWS
    dm.prepare_data()  # Lightning's own call inside trainer.fit
    pickle.loads(pickle.dumps(dm)).prepare_data()  # ddp_spawn's children get a pickled copy
    dm.setup("fit")
    assert len(reads) == ROWS
