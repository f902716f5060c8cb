"""The callback on a classifier that knows nothing of this package: attribute paths and a metadata table.

The end-to-end test writes a plain LightningModule (a torchvision ResNet-18 with one head), plain datasets of
``{image, label, image_id}`` samples cut from the built-in images, and a metadata CSV keyed by ``image_id``; the
callback gets nothing else. With the scanner as the training shortcut, the scanner verdict must be significant.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsca_lightning.attach import AttributeView
from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.data import SyntheticUltrasoundDataModule
from wsca_lightning.data.manifest import ManifestError
from wsca_lightning.data.metadata_table import MetadataTable
from wsca_lightning.summary import verdict


# ------------------------------------------------------------------------------------------- a user's own code


class ResNetClassifier(L.LightningModule):
    """What a user already has: torchvision's ResNet-18 with a 1-channel stem and one linear head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=num_classes)
        self.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch["image"]), batch["label"])
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch["image"]), batch["label"])
        self.log("val/loss", loss, batch_size=len(batch["label"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


class Samples(Dataset):
    """{image, label, image_id} items, as a user's dataset would give them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str]) -> None:
        self.images, self.labels, self.ids = images, labels, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "label": int(self.labels[i]), "image_id": self.ids[i]}


def builtin_split(dataset) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    risk = torch.stack([item["targets"]["risk"] for item in items])
    scanner = torch.stack([item["targets"]["scanner"] for item in items])
    return images, risk, [f"img_{item['id']}" for item in items], scanner


@pytest.fixture(scope="module")
def shortcut_data(tmp_path_factory):
    """Built-in images whose training split ties the scanner to the label, and a metadata CSV of the scanner and the
    hospital keyed by image id (training and validation rows)."""
    # each risk class from its own scanner in training (validation unassociated); on seeds 0-2 the verdict was
    # significant at the null's smallest p (1/41) in both epochs
    data = SyntheticUltrasoundDataModule(num_train=200, num_val=96, image_size=(32, 48), shortcut_strength=1.0,
                                         batch_size=24, seed=0)
    data.setup("fit")
    hospitals = data.task_specs[[s.name for s in data.task_specs].index("hospital")].class_names
    scanners = data.task_specs[[s.name for s in data.task_specs].index("scanner")].class_names
    splits = {}
    path = tmp_path_factory.mktemp("meta") / "metadata.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "scanner", "hospital"])
        for name, dataset in (("train", data.train_dataset), ("val", data.val_dataset)):
            images, risk, ids, scanner = builtin_split(dataset)
            hospital = torch.stack([dataset[i]["targets"]["hospital"] for i in range(len(dataset))])
            for i, image_id in enumerate(ids):
                writer.writerow([image_id, scanners[int(scanner[i])], hospitals[int(hospital[i])]])
            splits[name] = Samples(images, risk, ids)
    return splits, path


@pytest.mark.slow
def test_a_plain_resnet_classifier_gets_per_epoch_wsc_from_attribute_paths_and_a_csv(shortcut_data, tmp_path):
    splits, table = shortcut_data
    callback = WeightSpaceCorrelation(
        head="model.fc", metadata=str(table), id_key="image_id", protocol="probe_refit",
        subset_size=160, num_permutations=40, num_bootstrap=50, k_min=10, dirpath=str(tmp_path / "wsc"),
        class_names=["short", "intermediate", "normal"], save_plots=False,
    )
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
                        callbacks=[callback], enable_progress_bar=False, enable_checkpointing=False,
                        log_every_n_steps=5,
                        enable_model_summary=False, default_root_dir=tmp_path)
    L.seed_everything(0)
    trainer.fit(ResNetClassifier(), DataLoader(splits["train"], batch_size=24, shuffle=True),
                DataLoader(splits["val"], batch_size=48))

    with open(tmp_path / "csv" / "version_0" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = {int(r["epoch"]) for r in rows if r.get("wsc/scanner/max_abs")}
    assert sorted(per_epoch) == [0, 1]
    assert len([r for r in rows if r.get("wsc/scanner/max_abs")]) == 2  # one value per epoch

    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["primary"] == "label" and summary["protocol"] == "probe_refit"
    assert sorted(summary["tasks"]) == ["hospital", "scanner"]
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    scanner = summary["tasks"]["scanner"]
    # class names come from the table (fitted on the training rows) and the primary's from the user
    assert scanner["cols"] == sorted(scanner["cols"]) and len(scanner["cols"]) == 3
    assert scanner["rows"] == ["short", "intermediate", "normal"]
    assert verdict(scanner) == "significant", scanner["test"]


# ------------------------------------------------------------------------------------------- the pieces


def write_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_table_types_are_inferred_and_fitted_on_the_training_ids_only(tmp_path):
    rows = [[f"s{i}", ["A", "B", "C"][i % 3], f"{0.1 * i:.2f}", ""] for i in range(40)]
    table = MetadataTable(write_table(tmp_path / "m.csv", ["id", "site", "spacing", "empty"], rows), "id")
    assert {t: s.type for t, s in table.specs.items()} == {"site": "categorical", "spacing": "continuous",
                                                          "empty": "categorical"}
    table = MetadataTable(tmp_path / "m.csv", "id", columns={"site": {"column": "site"},
                                                             "spacing": {"column": "spacing", "type": "continuous",
                                                                         "bins": 2}})
    table.fit([f"s{i}" for i in range(20)])  # spacing 0.0 .. 1.9 only
    assert table.task_specs["site"].class_names == ("A", "B", "C")
    assert table.task_specs["spacing"].bin_edges[0] == 0.0 and table.task_specs["spacing"].bin_edges[-1] == 1.9
    labels = table.labels(["s0", "s1", "s39"])
    assert labels["site"].tolist() == [0, 1, 0] and labels["spacing"].tolist() == [0, 0, 1]


def test_table_problems_name_the_file_line_and_column(tmp_path):
    path = write_table(tmp_path / "m.csv", ["Image ID", "site"], [["a", "x"], ["a", "y"], ["", "x"]])
    with pytest.raises(ManifestError, match="id_key refers to a column that is not in the header.*'Image ID'"):
        MetadataTable(path, "image id")
    with pytest.raises(ManifestError) as info:
        MetadataTable(path, "Image ID")
    assert "repeated id" in str(info.value) and "line 3" in str(info.value)
    assert "empty id" in str(info.value) and "line 4" in str(info.value)
    ok = MetadataTable(write_table(tmp_path / "ok.csv", ["id", "site"], [["a", "x"], ["b", "y"]]), "id")
    with pytest.raises(ValueError, match=r"1 of the 2 ids of the training subset have no row \(ids 'c'\)"):
        ok.fit(["a", "c"])
    ids = write_table(tmp_path / "ids.csv", ["id", "patient", "site"],
                      [[f"s{i}", f"p{i}", "x" if i % 2 else "y"] for i in range(30)])
    with pytest.raises(ManifestError, match="identifier.*column 'patient'"):
        MetadataTable(ids, "id")


def test_view_captures_the_head_input_or_a_named_module_output():
    module = ResNetClassifier()
    module.eval()
    x = torch.randn(2, 1, 32, 48)
    view = AttributeView(module, head="model.fc", metadata=lambda batch: {"site": torch.tensor([0, 1])})
    with torch.no_grad():
        pooled = torch.flatten(module.model.avgpool(module.model.layer4(module.model.layer3(module.model.layer2(
            module.model.layer1(module.model.maxpool(module.model.relu(module.model.bn1(module.model.conv1(x))))))))),
            1)
        assert torch.allclose(view.wsc_embed((x, torch.tensor([0, 1]), ["a", "b"])), pooled)
        named = AttributeView(module, head="model.fc", embedding="model.avgpool",
                              metadata=lambda batch: {"site": torch.tensor([0, 1])})
        assert torch.allclose(named.wsc_embed({"image": x}), pooled)  # (B, 512, 1, 1) flattened
    assert view.wsc_head_weights()["label"].weight.shape == (3, 512)
    with pytest.raises(ValueError, match="head: ResNetClassifier has no submodule 'model.head'.*'model.fc'"):
        AttributeView(module, head="model.head", metadata=lambda b: {})
    with pytest.raises(ValueError, match="'model.layer1' is not a linear head"):
        AttributeView(module, head="model.layer1", metadata=lambda b: {})
    with pytest.raises(ValueError, match="class_names: 2 names for the 3 rows"):
        AttributeView(module, head="model.fc", class_names=["a", "b"], metadata=lambda b: {})
    with pytest.raises(KeyError, match="input_key: the batch has no entry 'image'.*keys \\['x'\\]"):
        view.wsc_embed({"x": x})


def test_callback_settings_for_an_unmodified_module_are_checked_at_construction(tmp_path):
    with pytest.raises(ValueError, match="head: metadata, id_key read an unmodified module"):
        WeightSpaceCorrelation(metadata="m.csv", id_key="image_id")
    with pytest.raises(ValueError, match="protocol: 'heads' compares the module's metadata heads"):
        WeightSpaceCorrelation(head="model.fc", metadata=lambda batch: {})
    with pytest.raises(ValueError, match=r"metadata: .*missing\.csv: file not found"):
        WeightSpaceCorrelation(head="model.fc", metadata=str(tmp_path / "missing.csv"), protocol="probe_refit")


class TinyClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.body(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Dicts(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        return {"image": torch.randn(3, 4) + i % 2, "label": i % 2, "site": (i // 2) % 2}


def test_metadata_callable_and_max_steps_count_epochs_for_every_n_epochs(tmp_path):
    """With max_steps (max_epochs=-1) every_n_epochs counts epochs and the step limit makes the last epoch."""
    callback = WeightSpaceCorrelation(head="fc", metadata=lambda batch: {"site": batch["site"]}, protocol="probe_refit",
                                      every_n_epochs=2, subset_size=48, k_min=4, num_permutations=0,
                                      num_bootstrap=10, save_plots=False, dirpath=str(tmp_path / "wsc"))
    trainer = L.Trainer(max_epochs=-1, max_steps=5 * 4, accelerator="cpu", logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(TinyClassifier(), DataLoader(Dicts(), batch_size=16, shuffle=True))
    assert [h["epoch"] for h in callback.history] == [1, 3, 4]  # epochs 2 and 4 by count, and the last (5th)
    assert callback.last_entry["tasks"]["site"]["cols"] == ["0", "1"]


class TwoHeads(TinyClassifier):
    """A module that already has a metadata head (trained beside the primary one)."""

    def __init__(self) -> None:
        super().__init__()
        self.site_fc = nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        z = self.body(batch["image"])
        return (nn.functional.cross_entropy(self.fc(z), batch["label"])
                + nn.functional.cross_entropy(self.site_fc(z), batch["site"]))


def test_existing_metadata_heads_are_compared_under_the_heads_protocol(tmp_path):
    callback = WeightSpaceCorrelation(head="fc", metadata_heads={"site": "site_fc"},
                                      metadata=lambda batch: {"site": batch["site"]}, subset_size=48, k_min=4,
                                      num_permutations=10, num_bootstrap=10, save_plots=False,
                                      dirpath=str(tmp_path / "wsc"))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    module = TwoHeads()
    trainer.fit(module, DataLoader(Dicts(), batch_size=16, shuffle=True))
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["protocol"] == "heads" and summary["tasks"]["site"]["source"] == "head"
    # the observed metadata directions are the module's own head rows
    site = torch.nn.functional.normalize(module.site_fc.weight.detach(), dim=1)
    primary = torch.nn.functional.normalize(module.fc.weight.detach(), dim=1)
    observed = torch.tensor(summary["tasks"]["site"]["unprojected"]["matrix"])
    assert torch.allclose(observed, primary @ site.T, atol=1e-5)


class InterfaceWithoutMetadataHeads(TinyClassifier):
    """The four-member interface with the primary head only: the metadata classes come from wsc_task_classes."""

    wsc_primary_task = "label"

    def wsc_embed(self, batch):
        return self.body(batch["image"])

    def wsc_head_weights(self):
        from wsca_lightning.interface import HeadWeights

        return {"label": HeadWeights(self.fc.weight, ("no", "yes"))}

    def wsc_targets(self, batch):
        return {"label": batch["label"], "site": batch["site"]}

    def wsc_task_classes(self):
        return {"site": ["north", "south"]}


def test_the_interface_needs_no_invented_metadata_heads_under_probe_refit(tmp_path):
    callback = WeightSpaceCorrelation(protocol="probe_refit", subset_size=48, k_min=4, num_permutations=10,
                                      num_bootstrap=10, save_plots=False, dirpath=str(tmp_path / "wsc"))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(InterfaceWithoutMetadataHeads(), DataLoader(Dicts(), batch_size=16))
    site = callback.last_entry["tasks"]["site"]
    assert site["cols"] == ["north", "south"] and site["rows"] == ["no", "yes"] and site["source"] == "probe"
    with pytest.raises(ValueError, match=r"protocol: 'heads' compares metadata heads, and \['site'\] have none"):
        WeightSpaceCorrelation().check_module(InterfaceWithoutMetadataHeads())
