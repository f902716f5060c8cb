"""Fashion-MNIST through the simulated scanners: IDX reading, both folder layouts, determinism, shortcut, subsets,
config errors and a training run, on tiny IDX files written in the real format (fast, and independent of the data);
the real files of Debian's dataset-fashion-mnist (installed by .ci/run) are checked where they are installed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsca_lightning.data.fashion import (
    DEFAULT_CLASSES,
    FASHION_CLASSES,
    FashionUltrasoundDataModule,
    FashionUltrasoundDataset,
    read_idx,
    render_garments,
)
from wsca_lightning.data.splits import cell_counts

REAL_ROOT = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = {"train": 30, "t10k": 10}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """``array`` as an IDX file (big-endian, the real format)."""
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def shape_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A simple 28 x 28 shape per class, with a random shift and brightness."""
    y, x = np.mgrid[0:28, 0:28] - 13.5 - rng.integers(-2, 3, size=2)[:, None, None]
    masks = [
        (abs(y) < 9) & (abs(x) < 9),  # square
        abs(x) < 3,  # vertical bar
        abs(y) < 3,  # horizontal bar
        y**2 + x**2 < 80,  # disc
        (y**2 + x**2 < 120) & (y**2 + x**2 > 40),  # ring
        abs(y - x) < 3,  # diagonal
        (abs(y) < 2) | (abs(x) < 2),  # cross
        (y > -8) & (abs(x) < (y + 8) / 2),  # triangle
        ((y + 5) ** 2 + x**2 < 20) | ((y - 5) ** 2 + x**2 < 20),  # two blobs
        ((y // 4 + x // 4) % 2 == 0) & (abs(y) < 10) & (abs(x) < 10),  # checkerboard
    ]
    return (masks[label] * rng.integers(120, 256)).astype(np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, per_class in PER_CLASS.items():
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = np.stack([shape_image(int(k), rng) for k in labels])
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def small(**overrides):
    opts = {"image_size": (32, 48)}
    return {**opts, **overrides}


# --------------------------------------------------------------------------------------------------------------------
# IDX


def test_read_idx_round_trip_gzip_and_plain(tmp_path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a", images, compress=False)
    for name in ("a.gz", "a"):
        out = read_idx(tmp_path / name)
        assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(images))
    values = np.array([[-3, 70000], [1, 2]], dtype=np.int32)
    write_idx(tmp_path / "b", values, compress=False)
    assert read_idx(tmp_path / "b").tolist() == values.tolist()  # big-endian decoded to native


def test_read_idx_rejects_bad_magic_and_truncated_files_naming_the_file(tmp_path) -> None:
    bad = tmp_path / "bad-magic.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + b"\x00" * 8))
    with pytest.raises(ValueError, match=r"bad-magic\.gz: not an IDX file"):
        read_idx(bad)
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "full", images, compress=False)
    short = tmp_path / "short-payload"
    short.write_bytes((tmp_path / "full").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short-payload: IDX size mismatch.*truncated"):
        read_idx(short)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress((tmp_path / "full").read_bytes())[:40])
    with pytest.raises(ValueError, match=r"cut\.gz: cannot read"):
        read_idx(cut)
    with pytest.raises(ValueError, match=r"missing\.gz: cannot read"):
        read_idx(tmp_path / "missing.gz")


# --------------------------------------------------------------------------------------------------------------------
# dataset


def test_dataset_is_deterministic_per_seed_and_items_are_labelled(root) -> None:
    a = FashionUltrasoundDataset("train", 48, root=str(root), seed=0, **small())
    b = FashionUltrasoundDataset("train", 48, root=str(root), seed=0, **small())
    c = FashionUltrasoundDataset("train", 48, root=str(root), seed=1, **small())
    assert torch.equal(a.images, b.images) and a.ids == b.ids
    assert all(torch.equal(a.columns[k], b.columns[k]) for k in a.columns)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (48, 1, 32, 48) and torch.isfinite(a.images).all()
    item = a[3]
    assert item["image"].shape == (1, 32, 48) and item["image"].dtype == torch.float32
    assert item["targets"]["garment"].dtype == torch.int64 and item["index"] == 3
    assert item["id"] == f"train-{int(a.columns['source_index'][3]):06d}"
    # only the configured classes, coded in their configured order
    labels = read_idx(root / "train-labels-idx1-ubyte.gz")
    names = [FASHION_CLASSES[int(k)] for k in labels[a.columns["source_index"]]]
    assert names == [DEFAULT_CLASSES[int(g)] for g in a.columns["garment"]]


def test_shortcut_only_in_train_and_changes_only_the_scanner(root) -> None:
    biased = FashionUltrasoundDataset("train", 60, root=str(root), shortcut_strength=1.0, **small())
    assert torch.equal(biased.columns["scanner"], biased.columns["garment"] % 3)
    plain = FashionUltrasoundDataset("train", 60, root=str(root), shortcut_strength=0.0, **small())
    for column in ("source_index", "garment", "hospital", "pixel_spacing", "bmi"):
        assert torch.equal(biased.columns[column], plain.columns[column]), column
    val = FashionUltrasoundDataset("val", 40, root=str(root), shortcut_strength=1.0, **small())
    assert val.shortcut_strength == 0.0
    assert not torch.equal(val.columns["scanner"], val.columns["garment"] % 3)


def test_rendering_uses_the_scanner_chain_and_shows_the_garment() -> None:
    garment = torch.zeros(4, 28, 28, dtype=torch.uint8)
    garment[:, 6:22, 6:22] = 230
    spacing = torch.full((4,), 0.28, dtype=torch.float64)
    scanner, hospital = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3])
    img = render_garments(garment, scanner, hospital, spacing, (64, 80), num_scanners=3, num_hospitals=4,
                          generator=torch.Generator().manual_seed(0))
    assert img.shape == (4, 1, 64, 80) and img.min() >= 0 and img.max() <= 1
    assert (img[:, 0, 0, 5] == 0).all()  # outside the sector
    centre, sac = img[:, 0, 28:36, 36:44].mean(dim=(1, 2)), img[:, 0, 28:36, 14:18].mean(dim=(1, 2))
    assert (centre > 2 * sac).all()  # the bright square stands out of the dark fluid around it


# --------------------------------------------------------------------------------------------------------------------
# datamodule


def test_datamodule_setup_specs_and_subsets_give_exact_cells(root) -> None:
    dm = FashionUltrasoundDataModule(root=str(root), num_train=120, num_val=40, num_scanners=2, **small())
    dm.setup("fit")
    names = [s.name for s in dm.task_specs]
    assert names == ["garment", "scanner", "hospital", "spacing", "bmi"]
    assert dm.task_specs[0].class_names == DEFAULT_CLASSES and len(dm.train_dataset) == 120
    assert dm.input_shape == (1, 32, 48) and dm.primary_task == "garment"
    assert dm.hparams["classes"] == list(DEFAULT_CLASSES) and dm.hparams["root"] == str(root)
    full_bins = dm.task_specs[3].bin_edges

    for subset, want in (({"mode": "balanced", "by": "scanner", "per_cell": 4}, lambda i, j: 4),
                         ({"mode": "biased", "by": "scanner", "major": 8, "minor": 3},
                          lambda i, j: 8 if j == i % 2 else 3)):
        dm = FashionUltrasoundDataModule(root=str(root), num_train=120, num_val=40, num_scanners=2,
                                         subset=subset, **small())
        dm.setup("fit")
        t = dm.train_dataset.targets
        counts = cell_counts(t["garment"].tolist(), t["scanner"].tolist(), range(len(dm.train_dataset)))
        assert counts == {(i, j): want(i, j) for i in range(4) for j in range(2)}, subset
        assert dm.task_specs[3].bin_edges == full_bins  # bins fitted on the pool, not the subset
        assert len(dm.train_dataset.images) == len(dm.train_dataset)  # only the chosen rows were rendered


def test_every_option_error_is_reported_at_once_with_its_key(root) -> None:
    with pytest.raises(ValueError) as err:
        FashionUltrasoundDataModule(
            root=str(root), classes=["T-shirt/top", "Jacket"], num_train=0, num_val=-1, image_size=[60, 80],
            in_channels=8, shortcut_strength=1.5, num_scanners=9, num_hospitals=1, normalization="zscore",
            target={"column": "scanner"}, metadata={"site": {"column": "site"}, "sp": {"column": "pixel_spacing",
                                                                                          "bins": 1}},
            subset={"mode": "lopsided"}, batch_size=0, num_workers=-1, seed=-2)
    message = str(err.value)
    for key in ("classes: unknown class name(s) ['Jacket']; valid: T-shirt/top, Trouser", "num_train:", "num_val:",
                "image_size:", "in_channels: the Fashion-MNIST data has 1 channel", "shortcut_strength:",
                "num_scanners:", "num_hospitals:", "normalization:", "target.column:", "metadata.site.column:",
                "metadata.sp.bins:", "subset.mode:", "batch_size:", "num_workers:", "seed:"):
        assert key in message, key
    assert message.startswith("invalid fashion_mnist data config (")
    with pytest.raises(ValueError, match="num_train: the train split .* holds 120 images of the 4 classes, got 121"):
        FashionUltrasoundDataModule(root=str(root), num_train=121, **small()).prepare_data()


def test_missing_root_or_file_names_every_layout_and_how_to_get_the_data(tmp_path, root) -> None:
    hint = ("install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) or point "
            "data.root at a folder with the four Fashion-MNIST IDX files, or at the root given to torchvision's "
            "FashionMNIST(root, download=True)")
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="root") as err:
        FashionUltrasoundDataModule(root=str(missing))
    assert (f"root: {missing} holds no complete set of the four Fashion-MNIST IDX files; looked in {missing} "
            f"(Debian's dataset-fashion-mnist layout): no such folder; {missing}/FashionMNIST/raw (torchvision's "
            f"FashionMNIST(root, download=True) layout): no such folder; {hint}") in str(err.value)
    partial = tmp_path / "partial"
    (partial / "FashionMNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (partial / name).write_bytes((root / name).read_bytes())
    (partial / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(
        gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    with pytest.raises(ValueError) as err:
        FashionUltrasoundDataModule(root=str(partial))
    assert (f"looked in {partial} (Debian's dataset-fashion-mnist layout): lacks t10k-labels-idx1-ubyte[.gz]; "
            f"{partial}/FashionMNIST/raw (torchvision's FashionMNIST(root, download=True) layout): lacks "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz];"
            ) in str(err.value)


def test_torchvision_raw_layout_plain_and_gz_reads_the_same_images(tmp_path, root) -> None:
    """``FashionMNIST(root, download=True)`` leaves ``<root>/FashionMNIST/raw/*-ubyte`` (and the ``.gz``): a tiny
    copy, train files plain and t10k files gzipped, renders exactly what the flat gzipped layout renders."""
    raw = tmp_path / "torchvision" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, compress in (("train", False), ("t10k", True)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte"
            array = read_idx(root / f"{name}.gz").numpy()
            write_idx(raw / (f"{name}.gz" if compress else name), array, compress=compress)
    assert not (raw / "train-images-idx3-ubyte.gz").exists() and (raw / "train-images-idx3-ubyte").is_file()
    for split, n in (("train", 8), ("val", 8)):
        flat = FashionUltrasoundDataset(split, n, root=str(root), **small())
        torchvision = FashionUltrasoundDataset(split, n, root=str(tmp_path / "torchvision"), **small())
        assert torch.equal(flat.images, torchvision.images) and flat.ids == torchvision.ids
    dm = FashionUltrasoundDataModule(root=str(tmp_path / "torchvision"), num_train=8, num_val=8, **small())
    assert dm.hparams["root"] == str(tmp_path / "torchvision")  # the configured root, not the raw folder


# --------------------------------------------------------------------------------------------------------------------
# training app


@pytest.mark.slow
def test_one_epoch_training_run_writes_the_wsc_summary(root, tmp_path) -> None:
    """The app's own train() on its composed config, in this process (the console script is tested in
    test_train_app)."""
    from wsca_lightning.cli.train import compose_train_config, train

    run = tmp_path / "run"
    train(compose_train_config(run, [
        "data=fashion_mnist", f"data.root={root}", "data.num_train=96", "data.num_val=40", "data.image_size=[32,48]",
        "trainer.max_epochs=1", "callbacks.wsc.subset_size=64", "callbacks.wsc.num_permutations=5",
        "trainer.enable_progress_bar=false"]))
    summary = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert summary["primary"] == "garment"
    assert set(summary["tasks"]) == {"scanner", "hospital", "spacing", "bmi"}
    assert summary["tasks"]["scanner"]["rows"] == list(DEFAULT_CLASSES)


# --------------------------------------------------------------------------------------------------------------------
# the real files (Debian's dataset-fashion-mnist)


@pytest.mark.skipif(not (REAL_ROOT / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files_have_the_official_counts_and_render() -> None:
    for prefix, count in (("train", 60_000), ("t10k", 10_000)):
        labels = read_idx(REAL_ROOT / f"{prefix}-labels-idx1-ubyte.gz")
        assert labels.shape == (count,) and torch.bincount(labels.long()).tolist() == [count // 10] * 10
    images = read_idx(REAL_ROOT / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    val = FashionUltrasoundDataset("val", 40, root=str(REAL_ROOT), classes=list(FASHION_CLASSES))
    assert torch.isfinite(val.images).all() and (val.images.flatten(1).std(dim=1) > 0).all()
    assert len(set(val.columns["garment"].tolist())) >= 8


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=sa_sononet32", "data.in_channels: the Fashion-MNIST data has 1 channel"),
        ("data.root=/nowhere", "data.root: /nowhere holds no complete set of the four Fashion-MNIST IDX files; "
                               "looked in /nowhere (Debian's"),
        ("data.classes=[Bag,Hat]", "data.classes: unknown class name(s) ['Hat']"),
    ],
)
def test_app_reports_fashion_config_errors_with_the_data_key(tiny_config, root, override, expected) -> None:
    from wsca_lightning.cli.train import ConfigError, train

    with pytest.raises(ConfigError) as err:
        train(tiny_config("data=fashion_mnist", f"data.root={root}", override))
    assert expected in str(err.value)
