"""Trainer and launcher configs, and the launch checks `wsca-train` makes before anything runs."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from conftest import TINY
from wsca_lightning.cli.train import compose_train_config
from wsca_lightning.cli.train import ConfigError, check_launch, outside_launch_size

TORCHRUN = {"TORCHELASTIC_RUN_ID": "42", "WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1"}
SLURM_BATCH = {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "wsca", "SLURM_PROCID": "0"}


@pytest.fixture(autouse=True)
def no_outside_launcher(monkeypatch):
    for name in [*TORCHRUN, *SLURM_BATCH]:
        monkeypatch.delenv(name, raising=False)


def test_outside_launchers_are_recognised(monkeypatch):
    assert outside_launch_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # what Lightning gives the processes it starts itself: not outside
    assert outside_launch_size() == 1
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    assert outside_launch_size() == 4
    for name in TORCHRUN:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: Lightning launches the ranks
    assert outside_launch_size() == 1
    monkeypatch.setenv("SLURM_JOB_NAME", "wsca")
    assert outside_launch_size() == 8


def with_mode(cfg, mode: RunMode):
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = mode
    HydraConfig().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    "trainer, expected",
    [
        ("cpu", {"accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1}),
        ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
        ("ddp", {"accelerator": "gpu", "devices": "auto", "strategy": "ddp", "precision": "bf16-mixed",
                 "num_nodes": 1, "sync_batchnorm": False}),
        ("multinode", {"accelerator": "gpu", "devices": 8, "strategy": "ddp", "num_nodes": 2}),
        ("ddp_spawn", {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}),
    ],
)
def test_trainer_configs(tmp_path, trainer, expected):
    cfg = compose_train_config(tmp_path, [f"trainer={trainer}"])
    assert {k: cfg.trainer[k] for k in expected} == expected
    if cfg.trainer.accelerator == "cpu":  # the GPU ones cannot be built on a CPU machine
        built = hydra.utils.instantiate(cfg.trainer)
        assert isinstance(built, L.Trainer) and built.world_size == expected["devices"]


def test_slurm_launcher_config_sizes_each_job_from_the_trainer(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="wsca_lightning.conf"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=multinode", "trainer.devices=4",
                                          "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu"
    hydra.utils.get_class(launcher["_target_"])  # the plugin is importable


def test_a_local_multirun_with_ddp_is_refused_and_allowed_under_slurm(tmp_path, monkeypatch):
    cfg = with_mode(compose_train_config(tmp_path, [*TINY, "trainer=ddp", "trainer.devices=2"]), RunMode.MULTIRUN)
    with pytest.raises(ConfigError, match=r"trainer.strategy: 'ddp' re-launches .* trainer=ddp_spawn"):
        check_launch(cfg)
    for name, value in SLURM_BATCH.items():  # hydra/launcher=slurm: SLURM starts the ranks
        monkeypatch.setenv(name, value)
    check_launch(cfg)
    for name in SLURM_BATCH:
        monkeypatch.delenv(name)
    check_launch(with_mode(compose_train_config(tmp_path, [*TINY, "trainer=ddp_spawn"]), RunMode.MULTIRUN))
    check_launch(with_mode(compose_train_config(tmp_path, [*TINY, "trainer=ddp", "trainer.devices=1"]),
                           RunMode.MULTIRUN))


def test_processes_of_one_torchrun_launch_must_be_given_one_run_directory(tmp_path, monkeypatch):
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="wsca_lightning.conf"):
        cfg = compose("train", overrides=["trainer=ddp"], return_hydra_config=True)
    with pytest.raises(ConfigError, match=r"hydra.run.dir: this is one of 4 processes"):
        check_launch(with_mode(cfg, RunMode.RUN))
    # compose_train_config gives hydra.run.dir on the command line, as every rank must
    check_launch(with_mode(compose_train_config(tmp_path, ["trainer=ddp"]), RunMode.RUN))


def test_the_launch_check_runs_before_the_data_is_built(tmp_path: Path):
    from wsca_lightning.cli.train import train

    cfg = with_mode(compose_train_config(tmp_path, [*TINY, "trainer=ddp", "trainer.devices=2",
                                                    "data.num_train=0"]), RunMode.MULTIRUN)
    with pytest.raises(ConfigError, match="trainer.strategy"):  # not the data.num_train error
        train(cfg)
