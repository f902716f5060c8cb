"""The analysis in a background thread: the same values as inline, logged at their own epoch, failures raised.

The toy module of ``test_callback`` trains (``lr > 0``), so every epoch's heads and embeddings differ; the
asynchronous and the synchronous run start from the same seed and must agree epoch by epoch.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

import wsca_lightning.wsc.engine as engine
from wsca_lightning.callbacks import WeightSpaceCorrelation
from test_callback import TupleBatchModule, dataset

EPOCHS = 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(tmp_path: Path, async_analysis: bool) -> tuple[WeightSpaceCorrelation, list[dict[str, str]]]:
    L.seed_everything(0, verbose=False)
    callback = WeightSpaceCorrelation(subset_size=120, k_min=4, batch_size=40, num_permutations=20,
                                      num_bootstrap=50, async_analysis=async_analysis)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv", version=""),
                        callbacks=[callback], enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TupleBatchModule(lr=0.05), DataLoader(dataset(), batch_size=50, shuffle=True))
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        return callback, list(csv.DictReader(handle))


def by_epoch(rows: list[dict[str, str]], prefix: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix) and value != "":
                out.setdefault(int(float(row["epoch"])), {})[key] = float(value)
    return out


def scalars(task: dict) -> dict[str, float]:
    return {k: float(v) for k, v in task.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_asynchronous_analysis_gives_the_synchronous_values_at_every_epoch(tmp_path):
    inline, inline_rows = run(tmp_path / "sync", async_analysis=False)
    background, background_rows = run(tmp_path / "async", async_analysis=True)

    assert [h["epoch"] for h in background.history] == [h["epoch"] for h in inline.history] == list(range(EPOCHS))
    for a, b in zip(inline.history, background.history):
        assert a["metrics"] == b["metrics"]  # the same training, epoch by epoch
        assert a["alarm_counts"] == b["alarm_counts"]
        for name in a["tasks"]:
            assert scalars(b["tasks"][name]) == pytest.approx(scalars(a["tasks"][name]), abs=1e-6, nan_ok=True)
    assert torch.allclose(torch.tensor(background.last_entry["tasks"]["other"]["matrix"]),
                          torch.tensor(inline.last_entry["tasks"]["other"]["matrix"]), atol=1e-6, rtol=0)

    # metrics.csv: one value per key and epoch, the same in both runs, in the row of that epoch's step
    sync_csv, async_csv = by_epoch(inline_rows, "wsc/"), by_epoch(background_rows, "wsc/")
    assert sorted(async_csv) == sorted(sync_csv) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        assert async_csv[epoch] == pytest.approx(sync_csv[epoch], abs=1e-6)
    loss_steps = {int(float(r["epoch"])): r["step"] for r in background_rows if r.get("train/loss")}
    wsc_steps = {int(float(r["epoch"])): r["step"] for r in background_rows if r.get("wsc/copy/max_abs")}
    assert wsc_steps == loss_steps
    assert not [t for t in threading.enumerate() if t.name.startswith("wsc-analysis")]  # the worker is gone


def test_a_worker_that_dies_mid_analysis_stops_training_with_its_error(tmp_path, monkeypatch):
    """The first analysis (epoch 0) fails halfway through, in the background thread: the error reaches the
    trainer while epoch 1 trains, instead of vanishing with the thread."""
    fit_probes = engine.fit_linear_probes
    calls = {"n": 0}

    def dies_halfway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            assert threading.current_thread().name.startswith("wsc-analysis")
            raise MemoryError("injected: the analysis worker died")
        return fit_probes(*args, **kwargs)

    monkeypatch.setattr(engine, "fit_linear_probes", dies_halfway)
    callback = WeightSpaceCorrelation(subset_size=120, k_min=4, batch_size=40, num_permutations=0,
                                      num_bootstrap=50, save_plots=False)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    with pytest.raises(MemoryError, match="injected: the analysis worker died"):
        trainer.fit(TupleBatchModule(lr=0.05), DataLoader(dataset(), batch_size=50, shuffle=True))
    assert trainer.current_epoch == 1  # raised while epoch 1 trained, not at fit end
    assert callback.history == []
    assert not [t for t in threading.enumerate() if t.name.startswith("wsc-analysis")]
