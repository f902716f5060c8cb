"""The ``data=manifest`` datamodule end to end: generated PNG manifests (incl. a FETAL_PLANES_DB replica) through
the real training app, splits, label spaces, subsets and errors naming the config key."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from wsca_lightning.cli.train import ConfigError, instantiate_node, train
from wsca_lightning.wsc.binning import fit_bin_edges
from conftest import TINY
from wsca_lightning.cli.train import compose_train_config

H, W = 32, 48
# the shared tiny run settings, minus the built-in data's own size keys
RUN = ["data.image_size=[32,48]", *(o for o in TINY if not o.startswith("data.num_"))]


def _image(label: int, rng: random.Random) -> torch.Tensor:
    """A uint8 (H, W) image whose brightness pattern depends on the class (left / middle / right bright band)."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    image = torch.rand(H, W, generator=g) * 60
    band = W // 3
    image[:, label * band:(label + 1) * band] += 150
    return image.clamp(0, 255).to(torch.uint8)


def _write(path: Path, image: torch.Tensor, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "rgb":
        Image.fromarray(image.unsqueeze(-1).expand(H, W, 3).contiguous().numpy()).save(path)
    elif kind == "gray16":
        Image.fromarray((image.to(torch.int32) * 257).numpy().astype("uint16")).save(path)
    else:
        Image.fromarray(image.numpy()).save(path)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """~200 PNGs (8-bit gray, 16-bit gray, RGB), 3 classes, patients of 2-4 images, scanner (10% missing),
    continuous spacing and site."""
    base = tmp_path_factory.mktemp("generic")
    root = base / "data"
    rng = random.Random(0)
    kinds = ["gray8", "gray16", "rgb"]  # Pillow comes with torchvision
    lines = ["image,label,patient,scanner,spacing,site"]
    row, patient = 0, 0
    while row < 200:
        patient += 1
        for _ in range(rng.randint(2, 4)):
            label = rng.randrange(3)
            name = f"img/p{patient:03d}_{row:03d}.png"
            _write(root / name, _image(label, rng), kinds[row % len(kinds)])
            scanner = "" if rng.random() < 0.1 else rng.choice(["GE", "Philips", "Siemens"])
            spacing = f"{rng.uniform(0.1, 0.5):.4f}"
            lines.append(f"{name},{['short', 'mid', 'normal'][label]},P{patient},{scanner},{spacing},"
                         f"site{patient % 3}")
            row += 1
    csv = base / "manifest.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, root


GENERIC_METADATA = ("data.metadata={scanner:{column:scanner,type:categorical},"
                    "spacing:{column:spacing,type:continuous,bins:4},site:{column:site,type:categorical}}")


def _generic_overrides(csv: Path, root: Path) -> list[str]:
    return ["data=manifest", f"data.manifest={csv}", f"data.root={root}", "data.group_column=patient",
            GENERIC_METADATA, *RUN]


@pytest.mark.slow  # an end-to-end training run
def test_generic_manifest_trains_with_wsc_for_every_metadata_head(generic, tmp_path):
    csv, root = generic
    before = _snapshot(root)
    cfg = compose_train_config(tmp_path / "run", _generic_overrides(csv, root))
    result = train(cfg)
    for task in ("scanner", "spacing", "site"):
        assert f"wsc/{task}/max_abs" in result["metrics"]
        assert task in result["summary"]["tasks"]
    assert result["summary"]["primary"] == "label"
    assert _snapshot(root) == before  # nothing written under root

    dm = instantiate_node(cfg, "data")
    dm.setup("fit")
    patients = dm.table.column("patient")
    parts = {s: {patients[i] for i in idx} for s, idx in
             (("train", dm.train_indices), ("val", dm.val_indices), ("test", dm.test_indices))}
    assert all(parts.values())
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    spacing = torch.tensor([float(v) for v in dm.table.column("spacing")], dtype=torch.float64)
    edges = fit_bin_edges(spacing[dm.train_indices], 4, "equal_width")
    spec = next(s for s in dm.task_specs if s.name == "spacing")
    assert spec.bin_edges == tuple(float(e) for e in edges)
    assert [s.name for s in dm.task_specs] == ["label", "scanner", "spacing", "site"]
    assert dm.task_specs[0].class_names == ("mid", "normal", "short")

    item = dm.train_dataset[0]
    assert item["image"].shape == (1, H, W) and item["image"].dtype == torch.float32
    assert set(item["targets"]) == {"label", "scanner", "spacing", "site"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, H, W) and batch["targets"]["label"].dtype == torch.int64
    missing = [dm.labels["scanner"][i] for i in range(len(patients)) if dm.table.rows[i]["scanner"] == ""]
    assert missing and all(v == -1 for v in missing)
    # resume check: the same specs pass, others are refused
    dm.load_state_dict(dm.state_dict())
    other = instantiate_node(compose_train_config(tmp_path / "r2", [*_generic_overrides(csv, root),
                                                                    "data.metadata.spacing.bins=3"]), "data")
    other.load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="task specs differ"):
        other.setup("fit")

    # post hoc on the same manifest: the checkpoint's label spaces are re-derived and checked, then analysed
    from wsca_lightning.cli.analyze import analyze

    analysis_overrides = [o.replace("callbacks.wsc.", "wsc.") for o in _generic_overrides(csv, root)
                          if not o.startswith("trainer.")]
    posthoc = analyze(compose_train_config(tmp_path / "posthoc", [
        *analysis_overrides, f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "wsc.num_permutations=20",
        "wsc.save_plots=false"], config_name="analyze"))["summary"]
    assert set(posthoc["tasks"]) == {"scanner", "spacing", "site"} and posthoc["protocol"] == "probe_refit"
    assert _snapshot(root) == before


# --------------------------------------------------------------------------------------------- FETAL_PLANES_DB

PLANES = ["Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax", "Maternal cervix", "Other"]
KEPT = PLANES[:4]
MACHINES = ["Voluson E6", "Voluson S10", "Aloka"]


@pytest.fixture(scope="module")
def fetal(tmp_path_factory):
    """The published layout: ';'-separated FETAL_PLANES_DB_data.csv (header ends in 'Train '), Images/<name>.png."""
    root = tmp_path_factory.mktemp("FETAL_PLANES_DB")
    rng = random.Random(1)
    lines = ["Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train "]
    (root / "Images").mkdir()
    row = 0
    patient = 0
    while row < 300:
        patient += 1
        train = "1" if patient % 4 else "0"
        machine = MACHINES[patient % 3]
        operator = f"Op. {patient % 2 + 1}"
        for k in range(4):
            plane = KEPT[(patient + k) % 4] if row % 6 else PLANES[4 + (row // 6) % 2]
            name = f"Patient{patient:05d}_Plane{k + 1}_1_of_1"
            label = KEPT.index(plane) % 3 if plane in KEPT else 0
            Image.fromarray(_image(label, rng).numpy()).save(root / "Images" / f"{name}.png")
            brain = "Trans-thalamic" if plane == "Fetal brain" else "Not A Brain"
            lines.append(f"{name};{patient};{plane};{brain};{operator};{machine};{train}")
            row += 1
    (root / "FETAL_PLANES_DB_data.csv").write_text("\n".join(lines) + "\n")
    return root


def _fetal(root: Path, out: Path, *extra: str):
    cfg = compose_train_config(out, ["data=fetal_planes", f"data.root={root}", *RUN, *extra])
    dm = instantiate_node(cfg, "data")
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def _cells(dm) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for i in dm.train_indices:
        key = (dm.labels["plane"][i], dm.labels["scanner"][i])
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow  # an end-to-end training run
def test_fetal_planes_preset_splits_and_subsets(fetal, tmp_path):
    cfg, dm = _fetal(fetal, tmp_path / "a")
    assert dm.primary_task == "plane" and dm.input_shape == (1, H, W)
    assert {r["Plane"] for r in dm.table.rows} == set(KEPT)
    official = {r["Patient_num"]: r["Train "] for r in dm.table.rows}
    patients = dm.table.column("Patient_num")
    parts = {s: {patients[i] for i in idx} for s, idx in
             (("train", dm.train_indices), ("val", dm.val_indices), ("test", dm.test_indices))}
    assert parts["val"] and parts["test"]
    assert not parts["train"] & parts["val"] and not parts["val"] & parts["test"] and not parts["train"] & parts["test"]
    assert all(official[p] == "1" for p in parts["train"] | parts["val"])
    assert all(official[p] == "0" for p in parts["test"])
    dm.setup("fit")
    assert dm.task_specs[0].class_names == tuple(KEPT)
    assert dm.task_specs[1].class_names == tuple(sorted(MACHINES))
    full = dm.train_indices

    _, balanced = _fetal(fetal, tmp_path / "b", "+data.subset={mode:balanced,by:scanner,per_cell:5}")
    assert _cells(balanced) == {(i, j): 5 for i in range(4) for j in range(3)}
    balanced.setup("fit")
    assert balanced.task_specs == dm.task_specs  # label spaces from the whole train split

    _, biased = _fetal(fetal, tmp_path / "c", "+data.subset={mode:biased,by:scanner,major:8,minor:2}")
    assert _cells(biased) == {(i, j): 8 if j == i % 3 else 2 for i in range(4) for j in range(3)}

    # the validation split subset the same way (val: cell sizes); without it validation is used whole
    assert biased.val_indices == dm.val_indices
    _, matched = _fetal(fetal, tmp_path / "v", "+data.subset={mode:balanced,by:scanner,per_cell:5,val:{per_cell:1}}")
    val_cells: dict[tuple[int, int], int] = {}
    for i in matched.val_indices:
        key = (matched.labels["plane"][i], matched.labels["scanner"][i])
        val_cells[key] = val_cells.get(key, 0) + 1
    assert val_cells == {(i, j): 1 for i in range(4) for j in range(3)}
    assert set(matched.val_indices) < set(dm.val_indices)

    _, whole = _fetal(fetal, tmp_path / "d", "+data.subset={mode:full}")
    assert whole.train_indices == full == dm.full_train_indices

    cfg, _ = _fetal(fetal, tmp_path / "e", "trainer.max_epochs=1")
    result = train(cfg)
    assert "wsc/scanner/max_abs" in result["metrics"] and "wsc/operator/max_abs" in result["metrics"]


# --------------------------------------------------------------------------------------------- errors


def test_bad_manifest_input_names_the_key(generic, fetal, tmp_path):
    csv, root = generic
    broken = tmp_path / "broken.csv"
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].replace(".png", "_gone.png", 1)
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r1", [*_generic_overrides(broken, root)]))
    assert "data.manifest:" in str(err.value) and "line 6" in str(err.value) and "not found" in str(err.value)

    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r2", ["data=fetal_planes", f"data.root={fetal}", *RUN,
                                                     "data.target.classes=[Fetal abdomen,Fetal brian]"]))
    assert "data.target.classes:" in str(err.value) and "Fetal brain" in str(err.value)

    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r3", ["data=fetal_planes", f"data.root={fetal}", *RUN,
                                                     "+data.subset={mode:balanced,by:scanner,per_cell:500}"]))
    assert "data.subset: cell" in str(err.value) and "lower subset.per_cell" in str(err.value)

    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r4", [*_generic_overrides(csv, root), "data.in_channels=8",
                                                     "data.image_size=[30,48]"]))
    assert "data.in_channels: manifest data gives 1-channel images" in str(err.value)
    assert "data.image_size:" in str(err.value)
    # a listed class spelled another way in some rows would lose them (rows outside classes are left out): refused
    respelled = tmp_path / "respelled.csv"
    lines = csv.read_text().splitlines()
    row = next(k for k, line in enumerate(lines) if ",short," in line)
    lines[row] = lines[row].replace(",short,", ",Short ,", 1)
    respelled.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r6", [*_generic_overrides(respelled, root),
                                                     "+data.target.classes=[short,mid,normal]"]))
    assert "data.target.classes: " in str(err.value)
    assert f"'Short' is the listed class 'short' spelled differently (line {row + 1})" in str(err.value)

    # a val split drawn from 4 single-class patients holds one patient: one class, a nan AUROC; refused up front
    few = tmp_path / "few.csv"
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:9]]
    few.write_text("image,label,patient\n" + "".join(
        f"{row[0]},{'short' if k < 4 else 'mid'},P{k // 2}\n" for k, row in enumerate(rows)))
    with pytest.raises(ConfigError) as err:
        train(compose_train_config(tmp_path / "r5", ["data=manifest", f"data.manifest={few}", f"data.root={root}",
                                                     "data.group_column=patient", "data.metadata={}",
                                                     "data.val_fraction=0.25", "data.test_fraction=0", *RUN]))
    assert "data.val_fraction: " in str(err.value) and "a single class" in str(err.value)
    assert "in the val split" in str(err.value) and "raise val_fraction" in str(err.value)
    assert not (tmp_path / "r1" / "checkpoints").exists()
    assert os.listdir(root) == ["img"]


def test_cache_images_decodes_each_image_once_and_shares_it_with_the_wsc_view(generic, tmp_path):
    import shutil

    from wsca_lightning.data import ManifestDataModule

    csv, root = generic
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # this test deletes files: never in the shared fixture's folder
    common = dict(manifest=str(csv), root=str(copy), group_column="patient", image_size=[32, 48], check_images=False)
    cached = ManifestDataModule(**common, cache_images=True)
    plain = ManifestDataModule(**common)
    for dm in (cached, plain):
        dm.setup("fit")
    first = cached.train_dataset.without_augmentation()[0]["image"]
    os.remove(cached.train_dataset.paths[0])
    assert torch.equal(cached.train_dataset.without_augmentation()[0]["image"], first)  # from memory
    assert cached.train_dataset[0]["image"].shape == first.shape  # the augmented view reads the same cache
    with pytest.raises(FileNotFoundError):
        plain.train_dataset[0]
