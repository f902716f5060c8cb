"""SA-SonoNet input channels of the ``data=manifest`` datamodule (segmentation maps from .npy or per-map PNGs, pixel
spacing planes), their validation, joint geometric augmentation, and ``on_degenerate``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from wsca_lightning.cli.train import ConfigError, instantiate_node, train
from wsca_lightning.data.manifest import read_grayscale
from wsca_lightning.data.manifest_datamodule import ManifestImageDataset
from conftest import TINY
from wsca_lightning.cli.train import compose_train_config

H, W = 32, 48          # image_size of the runs
H0, W0 = 48, 64        # stored size: the resize changes x and y by different factors
RUN = [f"data.image_size=[{H},{W}]", *(o for o in TINY if not o.startswith(("data.num_", "data.image_size=")))]
SEG = "data.channels.segmentation={column:seg,num_maps:5}"
SEG_PNG = "data.channels.segmentation={column:segpng,num_maps:5,pattern:'segpng/{}'}"
SPACING = "data.channels.spacing_columns=[px_x,px_y]"


def _maps(label: int, rng: np.random.Generator) -> np.ndarray:
    """(5, H0, W0) float32 probabilities; map 0 marks the class band."""
    maps = rng.uniform(0.0, 0.3, size=(5, H0, W0)).astype(np.float32)
    band = W0 // 2
    maps[0, :, label * band:(label + 1) * band] = 0.9
    return maps


@pytest.fixture(scope="module")
def chan(tmp_path_factory):
    """60 rows, 2 classes, patients of 2-3 images; .npy and PNG-per-map segmentations, px_x / px_y spacing, a
    constant metadata column and a scanner column."""
    base = tmp_path_factory.mktemp("channels")
    root = base / "data"
    for sub in ("img", "seg", "segpng"):
        (root / sub).mkdir(parents=True)
    rng = random.Random(0)
    nrng = np.random.default_rng(0)
    lines = ["image,label,patient,seg,segpng,px_x,px_y,const,scanner"]
    row, patient = 0, 0
    while row < 60:
        patient += 1
        for _ in range(rng.randint(2, 3)):
            label = rng.randrange(2)
            name = f"p{patient:03d}_{row:03d}"
            maps = _maps(label, nrng)
            image = (maps[0] * 200 + nrng.uniform(0, 40, size=(H0, W0))).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "img" / f"{name}.png")
            np.save(root / "seg" / f"{name}.npy", maps)
            for k in range(5):
                if row % 2:
                    Image.fromarray((maps[k] * 65535).round().astype(np.uint16)).save(
                        root / "segpng" / f"{name}_{k}.png")
                else:
                    Image.fromarray((maps[k] * 255).round().astype(np.uint8)).save(root / "segpng" / f"{name}_{k}.png")
            lines.append(f"img/{name}.png,{'ab'[label]},P{patient},seg/{name}.npy,{name}_{{map}}.png,"
                         f"{rng.uniform(0.1, 0.3):.4f},{rng.uniform(0.2, 0.4):.4f},A,{rng.choice(['GE', 'Aloka'])}")
            row += 1
    csv = base / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, root


def _overrides(csv: Path, root: Path, *extra: str) -> list[str]:
    return ["data=manifest", f"data.manifest={csv}", f"data.root={root}", "data.group_column=patient",
            "model=sa_sononet32", *RUN, *extra]


def _dm(csv, root, out, *extra):
    """The datamodule with its data checked and set up (the data is read in prepare_data, not the constructor)."""
    dm = instantiate_node(compose_train_config(out, _overrides(csv, root, *extra)), "data")
    try:
        dm.prepare_data()
        dm.setup("fit")
    except ConfigError as err:  # keyed from the data node, as wsca-train reports it
        raise err.under("data") from err
    return dm


def _row(dm, index: int) -> dict:
    return dm.table.rows[dm.train_indices[index]]


def test_npy_segmentation_and_spacing_planes(chan, tmp_path):
    csv, root = chan
    dm = _dm(csv, root, tmp_path, SEG, SPACING, "data.augment=false")
    assert dm.input_shape == (8, H, W)
    dm.setup("fit")
    for k in (0, 3):
        item = dm.train_dataset[k]
        row = _row(dm, k)
        x = item["image"]
        assert x.shape == (8, H, W) and x.dtype == torch.float32
        maps = torch.from_numpy(np.load(root / row["seg"]))
        expected = F.resize(maps, [H, W], antialias=True).clamp(0, 1)
        torch.testing.assert_close(x[1:6], expected)
        assert torch.allclose(x[6], torch.full((H, W), float(row["px_x"]) * W0 / W))
        assert torch.allclose(x[7], torch.full((H, W), float(row["px_y"]) * H0 / H))
        assert abs(float(x[0].mean())) < 1e-3  # sononet normalisation: image channel only
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (8, H, W)


def test_png_per_map_segmentation(chan, tmp_path):
    csv, root = chan
    dm = _dm(csv, root, tmp_path, SEG_PNG, SPACING, "data.augment=false")
    dm.setup("fit")
    for k in (0, 1):  # one 8-bit and (by parity of the row) possibly one 16-bit row
        row = _row(dm, k)
        stem = Path(row["seg"]).stem
        maps = torch.cat([read_grayscale(str(root / "segpng" / f"{stem}_{m}.png")) for m in range(5)])
        expected = F.resize(maps, [H, W], antialias=True).clamp(0, 1)
        torch.testing.assert_close(dm.train_dataset[k]["image"][1:6], expected)


def test_flip_and_rotation_are_applied_jointly(tmp_path):
    image = np.full((H0, W0), 40, dtype=np.uint8)
    image[:, 6:16] = 250  # bright band on the left
    Image.fromarray(image).save(tmp_path / "a.png")
    maps = np.zeros((5, H0, W0), dtype=np.float32)
    maps[0, :, 6:16] = 1.0
    np.save(tmp_path / "a.npy", maps)
    ds = ManifestImageDataset([str(tmp_path / "a.png")], ["a"], {"t": torch.zeros(1)}, image_size=(H, W),
                              normalization="sononet", augment=True, segmentation=[str(tmp_path / "a.npy")],
                              spacing=[(0.2, 0.3)])
    torch.manual_seed(0)
    sides = set()
    for _ in range(24):
        x = ds[0]["image"]
        assert x.shape == (8, H, W)
        image_col = int(x[0].mean(0).argmax())
        map_col = int(x[1].mean(0).argmax())
        assert abs(image_col - map_col) <= 2, (image_col, map_col)
        sides.add(map_col < W // 2)
        assert torch.allclose(x[6], torch.full((H, W), 0.2 * W0 / W))  # spacing planes never augmented
    assert sides == {True, False}  # both flipped and unflipped draws happened


def test_sa_sononet_trains_and_on_degenerate_drop(chan, tmp_path):
    csv, root = chan
    meta = "data.metadata={const:{column:const},scanner:{column:scanner}}"
    cfg = compose_train_config(tmp_path / "run", _overrides(csv, root, SEG, SPACING, meta, "data.on_degenerate=drop",
                                                            "trainer.max_epochs=1"))
    with pytest.warns(UserWarning, match=r"metadata head 'const' dropped.*single class"):
        result = train(cfg)
    assert "wsc/scanner/max_abs" in result["metrics"]
    assert "const" not in result["summary"]["tasks"]

    with pytest.raises(ConfigError) as err:
        _dm(csv, root, tmp_path / "e", SEG, SPACING, meta)
    assert "metadata head 'const': a single class" in str(err.value) and "'const'" in str(err.value)


def test_bad_channel_inputs_name_key_and_line(chan, tmp_path):
    csv, root = chan
    lines = csv.read_text().splitlines()
    bad = root / "seg" / "bad"
    bad.mkdir(exist_ok=True)
    np.save(bad / "four.npy", np.zeros((4, H0, W0), dtype=np.float32))
    np.save(bad / "small.npy", np.zeros((5, H0 // 2, W0), dtype=np.float32))
    np.save(bad / "big.npy", np.full((5, H0, W0), 3.0, dtype=np.float32))
    (bad / "junk.npy").write_bytes(b"not numpy")

    def edit(line: int, column: int, value: str) -> None:
        cells = lines[line - 1].split(",")
        cells[column] = value
        lines[line - 1] = ",".join(cells)

    edit(3, 3, "seg/gone.npy")
    edit(4, 3, "seg/bad/four.npy")
    edit(5, 5, "0")
    edit(6, 6, "-0.2")
    edit(7, 3, "seg/bad/small.npy")
    edit(8, 3, "seg/bad/big.npy")
    edit(9, 3, "seg/bad/junk.npy")
    edit(10, 3, "")
    edit(11, 6, "")
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        _dm(broken, root, tmp_path / "a", SEG, SPACING)
    message = str(err.value)
    by_key = {line.strip() for line in message.splitlines()[1:]}

    def has(key: str, line: int, *words: str) -> None:
        assert any(m.startswith(f"data.{key}:") and f"line {line})" in m and all(w in m for w in words)
                   for m in by_key), (key, line, words, message)

    has("channels.segmentation", 3, "not found", "'seg'")
    has("channels.segmentation", 4, "wrong number of segmentation maps", "expected 5")
    has("channels.spacing_columns", 5, "not a positive number", "'px_x'")
    has("channels.spacing_columns", 6, "not a positive number", "'px_y'")
    has("channels.segmentation", 7, "size differs")
    has("channels.segmentation", 8, "outside [0, 1]")
    has("channels.segmentation", 9, "cannot be loaded")
    has("channels.segmentation", 10, "segmentation missing")
    has("channels.spacing_columns", 11, "spacing missing")

    with pytest.raises(ConfigError) as err:  # spacing only: 3 channels, but sa_sononet32 takes 8
        _dm(csv, root, tmp_path / "b", SPACING)
    assert "data.in_channels: expected 3 (1 image + 0 segmentation maps + 2 spacing planes" in str(err.value)
    assert "got 8" in str(err.value)

    with pytest.raises(ConfigError) as err:
        _dm(csv, root, tmp_path / "c", "data.channels.segmentation={column:segg,num_maps:5}", SPACING)
    assert "data.channels.segmentation.column:" in str(err.value) and "did you mean 'seg'" in str(err.value)
