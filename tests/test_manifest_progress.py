"""The manifest datamodule's progress bars over the images and segmentation maps it decodes before training: shown on
a terminal (stderr), silent in logs and CI, absent when nothing is decoded (``check_images: false``)."""

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


def test_bar_on_a_terminal_while_maps_are_decoded(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for check_images in (True, False):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        _datamodule(manifest, check_images)
        shown = terminal.getvalue()
        for desc in BARS:
            if check_images:
                assert f"{desc}: 100%" in shown and f" {ROWS}/{ROWS} " in shown, shown
            else:
                assert desc not in shown, shown


def test_no_bar_off_a_terminal(manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _datamodule(manifest, check_images=True)
    err = capsys.readouterr().err
    assert not any(desc in err for desc in BARS), err
