"""The WSC figures and files reach every logger that takes them (wsca_lightning.tracking): a real MLflow tracking
server, an offline W&B run, and every logger at once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from wsca_lightning.cli.train import train

pytestmark = pytest.mark.slow

WSC_KEYS = ("wsc/scanner/max_abs", "wsc/scanner/p", "wsc/k")


def wsc_rows(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``(step, value)`` of every WSC key in the CSV logger's metrics.csv: what every logger was sent."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {key: [(int(r["step"]), float(r[key])) for r in rows if r.get(key, "") != ""] for key in WSC_KEYS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies awaiting a reaper do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 (SQLite store and artifacts in tmp_path), in its own session so
    that its whole process group (server and workers) is stopped afterwards."""
    pytest.importorskip("mlflow")
    port, log_path = free_port(), tmp_path / "mlflow_server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--artifacts-destination", str(tmp_path / "mlflow_artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job-runner processes: less CPU
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while group_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
        assert not group_alive(server.pid), "MLflow server processes outlived the test"

def test_mlflow_server_gets_the_scalars_figures_and_files(tiny_config, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    train(tiny_config("logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}",
                      "logger.mlflow.artifact_location=null", "logger.mlflow.experiment_name=wsc-test"))
    run_dir = tmp_path / "run"
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("wsc-test").experiment_id])
    run_id = run.info.run_id

    # one value per analysed epoch, at the steps (and values) the CSV logger got
    for key, expected in wsc_rows(run_dir).items():
        assert len(expected) == 2, key
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [step for step, _ in expected], key
        assert [m.value for m in history] == pytest.approx([value for _, value in expected]), key

    heatmaps = sorted(a.path for a in client.list_artifacts(run_id, "wsc/heatmaps"))
    assert heatmaps == ["wsc/heatmaps/epoch_0000.png", "wsc/heatmaps/epoch_0001.png"]
    files = {a.path for a in client.list_artifacts(run_id, "wsc")}
    assert {"wsc/wsc_over_epochs.png", "wsc/wsc_summary.json", "wsc/wsc_table.csv"} <= files
    local = json.loads((run_dir / "wsc" / "wsc_summary.json").read_text())
    remote = json.loads(Path(client.download_artifacts(run_id, "wsc/wsc_summary.json", str(tmp_path))).read_text())
    assert remote["primary"] == local["primary"] == "risk"
    assert [h["epoch"] for h in remote["history"]] == [h["epoch"] for h in local["history"]] == [0, 1]
    table = Path(client.download_artifacts(run_id, "wsc/wsc_table.csv", str(tmp_path)))
    assert table.read_text() == (run_dir / "wsc" / "wsc_table.csv").read_text()


def test_wandb_offline_run_holds_the_figures_and_files(tiny_config, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    # offline, and every directory W&B writes to under tmp_path; no code or system-metrics capture
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true",
                        "WANDB_DISABLE_GIT": "true", "WANDB__DISABLE_STATS": "true",
                        "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}.items():
        monkeypatch.setenv(name, value)
    try:
        train(tiny_config("logger=wandb", "logger.wandb.offline=true"))
    finally:
        wandb.finish()
        wandb.teardown()  # the wandb-core service process
    run_dir = tmp_path / "run"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    files = offline_run / "files"
    images = sorted(p.name for p in (files / "media" / "images" / "wsc").glob("*.png"))
    assert sum(name.startswith("heatmap_") for name in images) == 2
    assert sum(name.startswith("over_epochs_") for name in images) == 1
    local = json.loads((run_dir / "wsc" / "wsc_summary.json").read_text())
    assert json.loads((files / "wsc" / "wsc_summary.json").read_text()) == local
    assert (files / "wsc" / "wsc_table.csv").read_text() == (run_dir / "wsc" / "wsc_table.csv").read_text()


def test_many_loggers_each_get_their_share(tiny_config, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient

    cfg = tiny_config("logger=many_loggers", "trainer.max_epochs=1")
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow"}
    train(cfg)
    run_dir = tmp_path / "run"
    assert len(wsc_rows(run_dir)["wsc/scanner/max_abs"]) == 1  # the one epoch's scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert {"wsc/heatmap", "wsc/over_epochs"} <= set(events.Tags()["images"])
    assert "wsc/scanner/p" in events.Tags()["scalars"]
    # the heatmap sits at the step of its epoch's scalars
    assert [e.step for e in events.Images("wsc/heatmap")] == [step for step, _ in wsc_rows(run_dir)["wsc/k"]]
    # the default MLflow store and its artifacts live in the run directory
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wsca").experiment_id])
    assert {"wsc/wsc_summary.json", "wsc/wsc_table.csv", "wsc/wsc_over_epochs.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "wsc")}
    assert list((run_dir / "mlartifacts").glob("*/artifacts/wsc/wsc_summary.json"))

