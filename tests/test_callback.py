"""The WSC callback on a LightningModule that is not ours: the documented interface is all it needs."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.interface import HeadWeights


class TupleBatchModule(L.LightningModule):
    """A toy model with (x, y) tuple batches, a BatchNorm (eval mode matters) and three heads.

    ``mirror`` is tied to the primary head with the opposite sign and ``copy`` is the primary head itself, so their
    WSC are exactly -1 / +1 whatever the projection.
    """

    def __init__(self, lr: float = 0.0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.primary = nn.Linear(16, 3)
        self.other = nn.Linear(16, 2)
        self.lr = lr
        self.embed_modes: list[bool] = []

    wsc_primary_task = "label"

    def wsc_embed(self, batch):
        x = batch[0]
        self.embed_modes.append(self.training)
        return self.encoder(x)

    def wsc_head_weights(self):
        w = self.primary.weight
        return {
            "label": HeadWeights(w.detach(), ("a", "b", "c")),
            "copy": HeadWeights(w.detach() * 2.0, ("c0", "c1", "c2")),
            "mirror": HeadWeights(-w.detach(), ("m0", "m1", "m2")),
            "other": HeadWeights(self.other.weight.detach(), ("o0", "o1")),
        }

    def wsc_targets(self, batch):
        x, y = batch
        return {"label": y, "copy": y, "mirror": y, "other": (x[:, 0] > 0).long()}

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        z = self.encoder(x)
        loss = nn.functional.cross_entropy(self.primary(z), y) + self.other(z).pow(2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def dataset(n: int = 200) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g))


def fit(tmp_path, callback, epochs=2, lr=0.0, module=None):
    module = module or TupleBatchModule(lr=lr)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv", version=""),
                        callbacks=[callback], enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(dataset(), batch_size=50, shuffle=True))
    return module, trainer


def test_callback_logs_writes_files_and_summary_for_any_module(tmp_path):
    callback = WeightSpaceCorrelation(subset_size=120, k_min=4, batch_size=40)
    module, trainer = fit(tmp_path, callback, epochs=2, lr=0.05)

    assert trainer.callback_metrics["wsc/copy/max_abs"].item() == pytest.approx(1.0, abs=1e-6)
    assert trainer.callback_metrics["wsc/mirror/max_abs"].item() == pytest.approx(1.0, abs=1e-6)
    assert 0 < trainer.callback_metrics["wsc/other/max_abs"].item() < 1

    # embeddings come from eval mode and the training mode is restored afterwards
    assert module.embed_modes and not any(module.embed_modes)
    assert module.training

    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["primary"] == "label" and summary["epoch"] == 1 and summary["protocol"] == "heads"
    mirror = np.array(summary["tasks"]["mirror"]["matrix"])
    assert np.allclose(np.diag(mirror), -1.0)  # same rows, opposite sign
    assert summary["tasks"]["copy"]["rows"] == ["a", "b", "c"]
    assert summary["tasks"]["other"]["cols"] == ["o0", "o1"]
    assert summary["n_embeddings"] == 120 and summary["embedding_dim"] == 16
    assert summary["k"] >= 4
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "wsc").glob("*.npz")) == ["epoch_0000.npz", "epoch_0001.npz"]


def test_a_run_that_fails_later_still_leaves_the_summary_of_its_last_computed_epoch(tmp_path):
    class FailsInSecondEpoch(TupleBatchModule):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("simulated crash")
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, WeightSpaceCorrelation(subset_size=60, k_min=4), epochs=3, module=FailsInSecondEpoch())
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["epoch"] == 0 and [h["epoch"] for h in summary["history"]] == [0]
    assert not list((tmp_path / "wsc").glob("*.partial"))


def test_tasks_argument_selects_heads_and_unknown_names_fail_at_setup(tmp_path):
    callback = WeightSpaceCorrelation(tasks=["other"], subset_size=100, k_min=4)
    _, trainer = fit(tmp_path, callback, epochs=1)
    assert "wsc/other/max_abs" in trainer.callback_metrics
    assert "wsc/copy/max_abs" not in trainer.callback_metrics

    with pytest.raises(ValueError, match=r"unknown metadata head\(s\) \['scannr'\]"):
        fit(tmp_path / "bad", WeightSpaceCorrelation(tasks=["scannr"], k_min=4), epochs=1)
    with pytest.raises(ValueError, match="'label' is the primary head"):
        fit(tmp_path / "bad2", WeightSpaceCorrelation(tasks=["label"], k_min=4), epochs=1)


def test_a_module_without_the_interface_is_refused_with_a_pointer_to_it(tmp_path):
    class Plain(TupleBatchModule):
        wsc_head_weights = None

    with pytest.raises(TypeError, match="wsca_lightning.interface"):
        WeightSpaceCorrelation(k_min=4).check_module(Plain())


def test_every_n_epochs_skips_epochs_but_always_computes_the_last(tmp_path):
    callback = WeightSpaceCorrelation(subset_size=60, k_min=4, every_n_epochs=2)
    fit(tmp_path, callback, epochs=3)
    assert [h["epoch"] for h in callback.history] == [1, 2]


def test_subset_is_fixed_seeded_and_sorted():
    a = WeightSpaceCorrelation(subset_size=10, seed=3).evaluator
    assert a.subset_indices(100) == WeightSpaceCorrelation(subset_size=10, seed=3).evaluator.subset_indices(100)
    assert a.subset_indices(100) != WeightSpaceCorrelation(subset_size=10, seed=4).evaluator.subset_indices(100)
    assert a.subset_indices(100) == sorted(set(a.subset_indices(100)))
    assert a.subset_indices(6) == [0, 1, 2, 3, 4, 5]


def test_state_is_plain_python_and_round_trips(tmp_path):
    callback = WeightSpaceCorrelation(subset_size=60, k_min=4)
    fit(tmp_path, callback, epochs=1)
    state = callback.state_dict()
    json.dumps(state)  # plain Python only
    restored = WeightSpaceCorrelation(subset_size=60, k_min=4)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.history == callback.history


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_min": 0}, "k_min: must be an integer >= 1"),
        ({"var_threshold": 1.5}, "var_threshold: must be a number in (0.0, 1.0]"),
        ({"subset_size": 1}, "subset_size: must be an integer >= 4"),
        ({"subset_size": 6, "holdout_fraction": 0.1}, "subset_size/holdout_fraction: a subset of 6 embeddings"),
        ({"protocol": "probe"}, "protocol: must be one of heads, probe_refit"),
        ({"num_permutations": 1}, "num_permutations: must be 0 (no null) or >= 2"),
        ({"alarm": {"tasks": ["scanner"], "action": "halt"}}, "alarm.action: must be one of warn, stop"),
        ({"alarm": {"task": ["scanner"]}}, "alarm.task: unknown key"),
        ({"alarm": {"tasks": ["scanner"]}, "num_permutations": 0}, "alarm.tasks: the alarm reads p-values"),
        ({"alarm": {"tasks": ["scanner"]}, "tasks": ["hospital"]}, "alarm.tasks: ['scanner'] are not among"),
        ({"tasks": "scanner"}, "tasks: a list of head names"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError) as err:
        WeightSpaceCorrelation(**kwargs)
    assert message in str(err.value)


def test_probe_refit_protocol_compares_refitted_probes_and_logs_significance(tmp_path):
    callback = WeightSpaceCorrelation(protocol="probe_refit", subset_size=120, k_min=4, num_permutations=20,
                                      save_plots=False)
    _, trainer = fit(tmp_path, callback, epochs=1)
    summary = json.loads((tmp_path / "wsc" / "wsc_summary.json").read_text())
    assert summary["protocol"] == "probe_refit"
    assert {t["source"] for t in summary["tasks"].values()} == {"probe"}
    # 'copy' and 'mirror' have the same labels, so the same probe (to the solver tolerance)
    assert summary["tasks"]["copy"]["max_abs"] == pytest.approx(summary["tasks"]["mirror"]["max_abs"], abs=1e-6)
    for key in ("max_abs", "p", "z", "probe_auroc", "interpretable"):
        assert f"wsc/other/{key}" in trainer.callback_metrics
    # 'other' is x[:, 0] > 0: linearly encoded, so its probe passes the gate
    assert summary["tasks"]["other"]["interpretable"] is True
    assert not (tmp_path / "wsc" / "heatmaps").exists()  # save_plots=False


def test_a_module_without_labels_is_told_what_to_add(tmp_path):
    class NoTargets(TupleBatchModule):
        def wsc_targets(self, batch):
            return {"label": batch[1]}

    with pytest.raises(ValueError, match=r"copy: wsc_targets\(batch\) gives no labels for this task"):
        fit(tmp_path, WeightSpaceCorrelation(subset_size=60, k_min=4, num_permutations=20), epochs=1,
            module=NoTargets())


def test_a_task_with_one_class_in_the_subset_fails_before_the_first_step(tmp_path):
    class OneClass(TupleBatchModule):
        steps = 0

        def wsc_targets(self, batch):
            return {**super().wsc_targets(batch), "other": torch.zeros(len(batch[1]), dtype=torch.long)}

        def training_step(self, batch, batch_idx):
            OneClass.steps += 1
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"other: 1 class\(es\) among the 90 labelled rows .* Raise subset_size"):
        fit(tmp_path, WeightSpaceCorrelation(subset_size=120, k_min=4, num_permutations=20), epochs=1,
            module=OneClass())
    assert OneClass.steps == 0


def test_the_analysis_embeds_the_unaugmented_view_of_the_training_set(tmp_path):
    class CountingView(TensorDataset):
        reads = 0

        def __getitem__(self, i):
            CountingView.reads += 1
            return super().__getitem__(i)

    class Augmented(TensorDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x + 0.1 * torch.randn_like(x), y

        def without_augmentation(self):
            return CountingView(*self.tensors)

    data = dataset()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[WeightSpaceCorrelation(subset_size=120, k_min=4, num_permutations=20,
                                                          save_plots=False)])
    trainer.fit(TupleBatchModule(), DataLoader(Augmented(*data.tensors), batch_size=50, shuffle=True))
    assert CountingView.reads == 2 * 120  # the label check at train start and the embedding pass
