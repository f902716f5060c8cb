"""Built-in synthetic ultrasound data: metadata sampling, rendering, dataset and datamodule."""

from __future__ import annotations

import math

import pytest
import torch

from wsca_lightning.data.datamodule import DEFAULT_METADATA, SyntheticUltrasoundDataModule
from wsca_lightning.data.synthetic import (
    CONTINUOUS_RANGES,
    RISK_CLASSES,
    RISK_LENGTH_RANGES,
    SYNTHETIC_COLUMNS,
    SyntheticUltrasoundDataset,
    render_ultrasound,
    sample_metadata,
)
from wsca_lightning.data.scanner import hospital_names, scanner_names
from wsca_lightning.data.transforms import NORMALIZATIONS, normalize_image
from wsca_lightning.tasks import IGNORE_INDEX, TaskSpec
from wsca_lightning.wsc.binning import digitize, fit_bin_edges

SMALL = (32, 48)  # smallest sizes keep rendering in the milliseconds


def _meta(n: int, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    opts = dict(shortcut_strength=0.0, num_scanners=3, num_hospitals=4, missing_fraction=0.0)
    opts.update(kw)
    return sample_metadata(n, generator=torch.Generator().manual_seed(seed), **opts)


def _render(meta, size=SMALL, seed=0, **kw):
    opts = dict(num_scanners=3, num_hospitals=4)
    opts.update(kw)
    return render_ultrasound(meta, size, generator=torch.Generator().manual_seed(seed), **opts)


# --------------------------------------------------------------------------------------------------------------------
# transforms


def test_normalize_image_modes() -> None:
    img = torch.rand(4, 1, 16, 16)
    z = normalize_image(img, "sononet")
    assert z.shape == img.shape
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(z.std(dim=(1, 2, 3), unbiased=False), torch.full((4,), 255.0), rtol=1e-4)
    assert torch.equal(normalize_image(torch.zeros(1, 8, 8)), torch.zeros(1, 8, 8))  # zero std guarded
    assert torch.allclose(normalize_image(img, "minus_one_one"), img * 2 - 1)
    assert torch.equal(normalize_image(img, "none"), img)
    with pytest.raises(ValueError) as err:
        normalize_image(img, "imagenet")
    assert all(mode in str(err.value) for mode in NORMALIZATIONS)


# --------------------------------------------------------------------------------------------------------------------
# metadata


def test_sample_metadata_columns_dtypes_and_ranges() -> None:
    meta = _meta(2000)
    for col, kind in SYNTHETIC_COLUMNS.items():
        assert meta[col].shape == (2000,)
        assert meta[col].dtype == (torch.int64 if kind == "categorical" else torch.float64)
    assert set(meta["risk"].unique().tolist()) == {0, 1, 2}
    assert set(meta["scanner"].unique().tolist()) == {0, 1, 2}
    assert set(meta["hospital"].unique().tolist()) == {0, 1, 2, 3}
    for c, (lo, hi) in enumerate(RISK_LENGTH_RANGES):
        length = meta["cervical_length"][meta["risk"] == c]
        assert length.min() >= lo and length.max() <= hi
    for col in ("pixel_spacing", "bmi"):
        lo, hi = CONTINUOUS_RANGES[col]
        assert meta[col].min() >= lo and meta[col].max() <= hi
    assert scanner_names(3) == ["scanner_A", "scanner_B", "scanner_C"]
    assert hospital_names(2) == ["hospital_1", "hospital_2"]


def test_shortcut_full_strength_is_deterministic() -> None:
    for s in (2, 3, 5):
        meta = _meta(600, shortcut_strength=1.0, num_scanners=s)
        assert torch.equal(meta["scanner"], meta["risk"] % s)


def _max_deviation(meta: dict[str, torch.Tensor], s: int) -> float:
    dev = 0.0
    for c in range(len(RISK_CLASSES)):
        sc = meta["scanner"][meta["risk"] == c]
        probs = torch.bincount(sc, minlength=s).double() / sc.numel()
        dev = max(dev, float((probs - 1 / s).abs().max()))
    return dev


def test_shortcut_zero_and_partial_strength() -> None:
    assert _max_deviation(_meta(3000, seed=1), 3) < 0.1
    meta = _meta(3000, seed=2, shortcut_strength=0.5)
    for c in range(3):
        p = float((meta["scanner"][meta["risk"] == c] == c).double().mean())
        assert abs(p - (0.5 + 0.5 / 3)) < 0.05
    # Only the scanner column depends on the strength.
    base = _meta(500, seed=3)
    biased = _meta(500, seed=3, shortcut_strength=0.8)
    for col in ("risk", "hospital", "cervical_length", "pixel_spacing", "bmi"):
        assert torch.equal(base[col], biased[col])


def test_validation_split_is_unassociated_even_with_full_shortcut() -> None:
    train = SyntheticUltrasoundDataset("train", 1200, image_size=(16, 16), shortcut_strength=1.0, seed=4)
    val = SyntheticUltrasoundDataset("val", 1200, image_size=(16, 16), shortcut_strength=1.0, seed=4)
    assert torch.equal(train.columns["scanner"], train.columns["risk"] % 3)
    assert val.shortcut_strength == 0.0
    assert _max_deviation(val.columns, 3) < 0.1


def test_missing_fraction_blanks_metadata_but_never_the_primary() -> None:
    meta = _meta(4000, missing_fraction=0.3)
    assert (meta["risk"] >= 0).all()
    for col in ("scanner", "hospital"):
        assert abs(float((meta[col] == -1).double().mean()) - 0.3) < 0.03
        assert (meta[f"true_{col}"] >= 0).all()
        kept = meta[col] != -1
        assert torch.equal(meta[col][kept], meta[f"true_{col}"][kept])
    for col in ("cervical_length", "pixel_spacing", "bmi"):
        assert abs(float(meta[col].isnan().double().mean()) - 0.3) < 0.03
        assert not meta[f"true_{col}"].isnan().any()
    assert not any((_meta(500)[c] == -1).any() for c in ("scanner", "hospital"))
    # Rendering uses the true values, so blanked cells still render.
    ds = SyntheticUltrasoundDataset("val", 40, image_size=(16, 16), missing_fraction=0.5)
    assert torch.isfinite(ds.images).all()
    assert torch.isnan(ds.columns["pixel_spacing"]).any()


# --------------------------------------------------------------------------------------------------------------------
# rendering


def test_render_shapes_ranges_and_black_outside_sector() -> None:
    meta = _meta(12)
    img, seg = _render(meta, (64, 80), with_segmentation=True)
    assert img.shape == (12, 1, 64, 80) and img.dtype == torch.float32
    assert seg is not None and seg.shape == (12, 5, 64, 80) and seg.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and seg.min() >= 0 and seg.max() <= 1
    assert (seg.amax(dim=(2, 3)) > 0.5).all()  # every structure is present in every image
    # Corners are outside the fan (hospitals 1-4 put their markers in the corner pixels themselves).
    assert (img[:, 0, 0, 5] == 0).all() and (img[:, 0, -1, 5] == 0).all()
    img2, seg2 = _render(meta, (64, 80))
    assert seg2 is None and torch.equal(img, img2)
    with pytest.raises(ValueError, match="image_size"):
        _render(meta, (60, 80))


def test_bmi_is_not_rendered_but_scanner_and_hospital_are() -> None:
    meta = _meta(8)
    base, _ = _render(meta)
    other_bmi = dict(meta, bmi=meta["bmi"] + 10, true_bmi=meta["true_bmi"] + 10)
    assert torch.equal(_render(other_bmi)[0], base)
    for col, k in (("scanner", 3), ("hospital", 4)):
        changed = dict(meta, **{f"true_{col}": (meta[f"true_{col}"] + 1) % k})
        diff = (_render(changed)[0] - base).abs().flatten(1).amax(dim=1)
        assert (diff > 0.1).all(), col


def test_band_length_follows_cervical_length_and_spacing() -> None:
    meta = _meta(4)
    meta["true_pixel_spacing"] = torch.full((4,), 0.28, dtype=torch.float64)
    meta["true_cervical_length"] = torch.tensor([16.0, 24.0, 36.0, 48.0], dtype=torch.float64)
    _, seg = _render(meta, (64, 80), with_segmentation=True)
    canal_px = (seg[:, 0] > 0.5).flatten(1).sum(1)
    assert (canal_px[1:] > canal_px[:-1]).all()
    meta["true_pixel_spacing"] = torch.full((4,), 0.24, dtype=torch.float64)  # finer spacing: longer in pixels
    _, seg_fine = _render(meta, (64, 80), with_segmentation=True)
    assert ((seg_fine[:, 0] > 0.5).flatten(1).sum(1) > canal_px).all()


# --------------------------------------------------------------------------------------------------------------------
# dataset


def test_dataset_determinism_and_split_streams() -> None:
    a = SyntheticUltrasoundDataset("train", 24, image_size=SMALL, seed=7)
    b = SyntheticUltrasoundDataset("train", 24, image_size=SMALL, seed=7)
    c = SyntheticUltrasoundDataset("train", 24, image_size=SMALL, seed=8)
    v = SyntheticUltrasoundDataset("val", 24, image_size=SMALL, seed=7)
    assert torch.equal(a.images, b.images)
    for col in SYNTHETIC_COLUMNS:
        assert torch.equal(a.columns[col], b.columns[col])
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, v.images)
    assert not torch.equal(a.columns["pixel_spacing"], v.columns["pixel_spacing"])
    assert a.ids[3] == "train-000003" and v.ids[23] == "val-000023"


@pytest.mark.parametrize("in_channels", [1, 8])
def test_dataset_items(in_channels: int) -> None:
    h, w = 48, 64
    ds = SyntheticUltrasoundDataset("train", 10, image_size=(h, w), in_channels=in_channels, seed=1)
    assert len(ds) == 10
    item = ds[3]
    assert set(item) == {"image", "targets", "id", "index"}
    assert item["image"].shape == (in_channels, h, w) and item["image"].dtype == torch.float32
    assert item["id"] == "train-000003" and item["index"] == 3
    assert item["targets"]["risk"].dtype == torch.int64 and item["targets"]["risk"].ndim == 0
    image = item["image"][0]  # sononet normalisation: zero mean, std 255
    assert abs(float(image.mean())) < 1e-2 and abs(float(image.std(unbiased=False)) - 255) < 0.5
    if in_channels == 8:
        seg = item["image"][1:6]
        assert seg.min() >= 0 and seg.max() <= 1
        spacing = float(ds.columns["pixel_spacing"][3])
        assert torch.allclose(item["image"][6], torch.full((h, w), spacing * 288 / w))  # x
        assert torch.allclose(item["image"][7], torch.full((h, w), spacing * 224 / h))  # y
    assert ds.column_classes("scanner") == scanner_names(3)
    assert ds.column_classes("risk") == list(RISK_CLASSES)
    with pytest.raises(ValueError):
        ds.column_classes("bmi")


def test_dataset_argument_errors() -> None:
    with pytest.raises(ValueError, match="in_channels") as err:
        SyntheticUltrasoundDataset("train", 4, in_channels=3)
    assert "1" in str(err.value) and "8" in str(err.value)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticUltrasoundDataset("train", 4, image_size=(64, 70))
    with pytest.raises(ValueError, match="shortcut_strength"):
        SyntheticUltrasoundDataset("train", 4, shortcut_strength=1.5)
    with pytest.raises(ValueError, match="missing_fraction"):
        SyntheticUltrasoundDataset("train", 4, missing_fraction=1.0)


# --------------------------------------------------------------------------------------------------------------------
# datamodule


def test_datamodule_end_to_end() -> None:
    dm = SyntheticUltrasoundDataModule(num_train=64, num_val=32, batch_size=16, in_channels=8, missing_fraction=0.2)
    assert dm.input_shape == (8, 64, 80) and dm.primary_task == "risk"
    with pytest.raises(RuntimeError):
        dm.task_specs
    dm.setup("fit")
    train_ds = dm.train_dataset
    dm.setup("validate")
    assert dm.train_dataset is train_ds  # idempotent
    specs = dm.task_specs
    assert [s.name for s in specs] == ["risk", *DEFAULT_METADATA]
    assert specs[0] == TaskSpec("risk", "categorical", RISK_CLASSES)
    assert specs[1].class_names == tuple(scanner_names(3))
    assert [s.kind for s in specs] == ["categorical", "categorical", "categorical", "continuous", "continuous"]
    for loader, n in ((dm.train_dataloader(), 64), (dm.val_dataloader(), 32)):
        batch = next(iter(loader))
        assert batch["image"].shape == (16, 8, 64, 80) and batch["image"].dtype == torch.float32
        assert set(batch["targets"]) == {s.name for s in specs}
        for spec in specs:
            y = batch["targets"][spec.name]
            assert y.shape == (16,) and y.dtype == torch.int64
            assert ((y >= 0) & (y < spec.num_classes) | (y == IGNORE_INDEX)).all()
        assert (batch["targets"]["risk"] >= 0).all()
        assert len(batch["id"]) == 16 and batch["index"].shape == (16,)
        assert sum(len(b["id"]) for b in loader) == n  # drop_last=False
    # Shuffling is seeded: a fresh loader gives the same first batch.
    assert batch_ids(dm.train_dataloader()) == batch_ids(dm.train_dataloader())
    assert batch_ids(dm.train_dataloader()) != [f"train-{i:06d}" for i in range(16)]

    state = dm.state_dict()
    assert state == {"task_specs": [s.to_dict() for s in specs]}
    other = SyntheticUltrasoundDataModule(num_train=64, num_val=32, in_channels=8, missing_fraction=0.2)
    other.load_state_dict(state)
    other.setup()  # same config re-derives the same specs
    reseeded = SyntheticUltrasoundDataModule(num_train=64, num_val=32, seed=1)
    reseeded.setup()
    with pytest.raises(ValueError, match="task specs"):
        reseeded.load_state_dict(state)


def batch_ids(loader) -> list[str]:
    return list(next(iter(loader))["id"])


def test_bins_are_fitted_on_train_only_and_val_is_clamped() -> None:
    metadata = {"spacing": {"column": "pixel_spacing", "type": "continuous", "bins": 4, "binning": "equal_width"}}
    dm = SyntheticUltrasoundDataModule(num_train=6, num_val=64, metadata=metadata, missing_fraction=0.1, seed=3)
    dm.setup()
    spec = dm.task_specs[1]
    train_values = dm.train_dataset.columns["pixel_spacing"]
    edges = fit_bin_edges(train_values, 4, "equal_width")
    assert spec.bin_edges == tuple(edges.tolist())
    assert torch.equal(dm.train_dataset.targets["spacing"], digitize(train_values, edges))
    val_values = dm.val_dataset.columns["pixel_spacing"]
    val_labels = dm.val_dataset.targets["spacing"]
    below, above = val_values < edges[0], val_values > edges[-1]
    assert below.any() and above.any()  # 6 training samples do not span the validation range
    assert (val_labels[below] == 0).all() and (val_labels[above] == 3).all()
    assert torch.equal(val_labels == IGNORE_INDEX, val_values.isnan())


def test_datamodule_collects_all_config_errors() -> None:
    metadata = {
        "scanr": {"column": "scanr", "type": "categorical"},
        "spacing": {"type": "continuous"},
        "length": {"column": "cervical_length", "type": "contin"},
        "few": {"column": "bmi", "type": "continuous", "bins": 1, "binning": "kmeans"},
        "scanner": {"column": "scanner", "type": "continuous"},
        "bmi_cat": {"column": "bmi", "type": "categorical"},
        "hospital": {"colum": "hospital", "column": "hospital", "type": "categorical"},
        "bad/name": {"column": "hospital", "type": "categorical"},
        "again": {"column": "risk", "type": "categorical"},
        "bin": {"column": "scanner", "type": "binary"},
    }
    with pytest.raises(ValueError) as err:
        SyntheticUltrasoundDataModule(
            image_size=(60, 80), shortcut_strength=2.0, in_channels=4, num_train=0, metadata=metadata
        )
    msg = str(err.value)
    expected = [
        "metadata.scanr.column: 'scanr' is not a column",
        "metadata.spacing: a metadata head needs a 'column'",
        "metadata.length.type: must be one of binary, categorical, continuous, got 'contin'",
        "metadata.few.bins: continuous heads need bins >= 2",
        "metadata.few.binning:",
        "metadata.scanner.type: column 'scanner' is categorical, not continuous",
        "metadata.bmi_cat.type: column 'bmi' is continuous",
        "metadata.hospital.colum: unknown key; valid keys: column, type, bins, binning",
        "metadata.bad/name:",
        "metadata.again.column:",
        "metadata.bin.type: binary needs a column with exactly 2 classes",
        "image_size:",
        "shortcut_strength:",
        "in_channels:",
        "num_train:",
    ]
    for line in expected:
        assert line in msg, line
    assert len(msg.splitlines()) == len(expected) + 1  # one header line, then one line per problem


def test_datamodule_config_variants() -> None:
    dm = SyntheticUltrasoundDataModule(num_train=16, num_val=8, metadata={}, image_size=[32, 48])
    dm.setup()
    assert [s.name for s in dm.task_specs] == ["risk"] and dm.input_shape == (1, 32, 48)
    binary = SyntheticUltrasoundDataModule(
        num_train=16, num_val=8, num_scanners=2, metadata={"scanner": {"column": "scanner", "type": "binary"}}
    )
    binary.setup()
    assert binary.task_specs[1] == TaskSpec("scanner", "binary", ("scanner_A", "scanner_B"))
    renamed = SyntheticUltrasoundDataModule(
        num_train=16,
        num_val=8,
        target={"column": "cervical_length", "type": "continuous", "bins": 3, "name": "cl"},
        metadata={"length": {"column": "risk", "type": "categorical"}},
    )
    renamed.setup()
    assert renamed.primary_task == "cl" and renamed.task_specs[0].num_classes == 3
    assert set(renamed.train_dataset[0]["targets"]) == {"cl", "length"}


def test_datamodule_accepts_omegaconf() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"target": {"column": "risk", "type": "categorical"}, "metadata": DEFAULT_METADATA, "image_size": [32, 48]}
    )
    dm = SyntheticUltrasoundDataModule(
        num_train=16, num_val=8, target=cfg.target, metadata=cfg.metadata, image_size=cfg.image_size
    )
    assert type(dm.metadata["spacing"]) is dict and dm.image_size == (32, 48)
    assert all(isinstance(v, (int, float, str, list, dict)) for v in dm.hparams.values())
    assert not math.isnan(dm.hparams["shortcut_strength"])


def test_on_device_serves_the_same_batches_as_the_item_loader_one_gather_per_batch():
    import lightning as L

    from wsca_lightning.data.base import DeviceResidentDataset

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    modules = {}
    for on_device in (False, True):
        datamodule = SyntheticUltrasoundDataModule(num_train=40, num_val=16, batch_size=8, seed=3, on_device=on_device)
        datamodule.trainer = trainer  # the device comes from the trainer's strategy
        datamodule.setup("fit")
        modules[on_device] = datamodule
    loader = modules[True].train_dataloader()
    assert isinstance(loader.dataset, DeviceResidentDataset)
    assert loader.dataset is modules[True].train_dataloader().dataset  # copied to the device once
    for plain, resident in zip(modules[False].train_dataloader(), loader):  # same seeded shuffle
        assert torch.equal(plain["image"], resident["image"])
        assert plain["targets"].keys() == resident["targets"].keys()
        for name in plain["targets"]:
            assert torch.equal(plain["targets"][name], resident["targets"][name])
        assert plain["id"] == resident["id"] and torch.equal(plain["index"], resident["index"])
    # single items too (the WSC callback's label check reads a Subset of the loader's dataset)
    item, plain_item = loader.dataset[5], modules[False].train_dataset[5]
    assert torch.equal(item["image"], plain_item["image"]) and item["id"] == plain_item["id"]


def test_on_device_needs_the_loader_in_the_training_process():
    with pytest.raises(ValueError, match=r"on_device: batches are cut on the device .* set num_workers: 0"):
        SyntheticUltrasoundDataModule(on_device=True, num_workers=2)
    with pytest.raises(ValueError, match="on_device: must be true or false"):
        SyntheticUltrasoundDataModule(on_device="gpu")
