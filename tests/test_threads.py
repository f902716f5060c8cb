"""Each training process's torch intra-op threads: its share of the cores (wsca_lightning.threads), set in every
rank, logged once, and overridable with ``torch_threads``."""

from __future__ import annotations

import logging
import os
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from wsca_lightning.cli.train import ConfigError, train
from wsca_lightning.threads import CONCURRENT_RUNS_ENV, TorchThreads, available_cores, choose_threads

SHARE_LINE = ("torch intra-op threads: 1 (2 cores shared by 2 local processes: 2 DDP ranks; "
              "set torch_threads=N to change)")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The tests set this process's torch threads; the rest of the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("cores", "ranks", "runs", "expected"),
    [(2, 1, 1, 2), (2, 2, 1, 1), (8, 2, 2, 2), (16, 3, 1, 5), (3, 2, 1, 1), (1, 4, 1, 1), (2, 2, 2, 1)],
)
def test_a_process_gets_its_share_of_the_cores_and_at_least_one_thread(cores, ranks, runs, expected):
    choice = choose_threads(None, cores=cores, local_ranks=ranks, concurrent_runs=runs, runs_from="x")
    assert choice.threads == expected


def test_the_log_line_says_how_the_share_was_counted():
    assert choose_threads(None, cores=2, local_ranks=2).message() == SHARE_LINE
    assert choose_threads(None, cores=4, concurrent_runs=2, runs_from="WSCA_CONCURRENT_RUNS=2").message() == (
        "torch intra-op threads: 2 (4 cores shared by 2 local processes: 2 runs (WSCA_CONCURRENT_RUNS=2); "
        "set torch_threads=N to change)")
    assert choose_threads(None, cores=8).message() == (
        "torch intra-op threads: 8 (8 cores shared by 1 local process; set torch_threads=N to change)")


def test_torch_threads_wins_over_omp_num_threads_which_wins_over_the_share():
    both = choose_threads(3, cores=2, local_ranks=2, omp_num_threads=4)
    assert (both.threads, both.message()) == (3, "torch intra-op threads: 3 (torch_threads=3)")
    env = choose_threads(None, cores=8, local_ranks=2, omp_num_threads=3)
    assert env.threads == 3
    assert "OMP_NUM_THREADS=3 in the environment; set torch_threads=N to change" in env.message()


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr("wsca_lightning.threads.available_cores", lambda: 8)


def cpu_trainer(devices: int) -> L.Trainer:
    # built, never fitted: no process starts
    return L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                     logger=False, enable_checkpointing=False, enable_progress_bar=False)


def test_the_callback_counts_the_trainers_local_ranks_and_the_runs_sharing_the_machine(eight_cores):
    assert TorchThreads(environ={}).choose(cpu_trainer(1)).threads == 8
    assert TorchThreads(environ={}).choose(cpu_trainer(2)).threads == 4
    # a joblib multirun: n_jobs parallel runs of 2 ranks each; -1 is one run per core
    assert TorchThreads(launcher={"n_jobs": 2}, environ={}).choose(cpu_trainer(2)).threads == 2
    assert TorchThreads(launcher={"n_jobs": -1}, environ={}).choose(cpu_trainer(1)).threads == 1
    assert TorchThreads(launcher={"_target_": "BasicLauncher"}, environ={}).choose(cpu_trainer(1)).threads == 8
    # the environment's count of runs replaces the launcher's
    both = TorchThreads(launcher={"n_jobs": 8}, environ={CONCURRENT_RUNS_ENV: "2"})
    assert both.choose(cpu_trainer(1)).threads == 4
    # OMP_NUM_THREADS is respected unless torch_threads is given; an empty one is unset
    assert TorchThreads(environ={"OMP_NUM_THREADS": "3"}).choose(cpu_trainer(2)).threads == 3
    assert TorchThreads(5, environ={"OMP_NUM_THREADS": "3"}).choose(cpu_trainer(2)).threads == 5
    assert TorchThreads(environ={"OMP_NUM_THREADS": ""}).choose(cpu_trainer(2)).threads == 4


def test_a_gpu_process_gets_the_same_share_as_a_cpu_one(eight_cores):
    """Documented decision: the WSC analysis runs on the CPU beside GPU training with the process's thread count,
    so 4 GPU ranks on 8 cores take 2 threads each (not torch's 8, not a fixed small number)."""
    gpu_trainer = SimpleNamespace(num_devices=4, is_global_zero=True, accelerator="gpu")
    assert TorchThreads(environ={}).choose(gpu_trainer).threads == 2  # type: ignore[arg-type]
    one_gpu = SimpleNamespace(num_devices=1, is_global_zero=True, accelerator="gpu")
    assert TorchThreads(environ={}).choose(one_gpu).threads == 8  # type: ignore[arg-type]


def test_available_cores_follow_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert available_cores() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_a_bad_torch_threads_is_refused_naming_the_key(value):
    expected = rf"^torch_threads: {re.escape(repr(value))} is not a whole number >= 1; set a thread count, or null"
    with pytest.raises(ValueError, match=expected):
        TorchThreads(value, environ={})


@pytest.mark.parametrize(
    ("environ", "launcher", "key"),
    [({"OMP_NUM_THREADS": "0"}, None, "OMP_NUM_THREADS"), ({CONCURRENT_RUNS_ENV: "two"}, None, CONCURRENT_RUNS_ENV),
     ({}, {"n_jobs": 0}, "hydra.launcher.n_jobs")],
)
def test_a_bad_count_from_the_environment_or_the_launcher_is_refused_naming_it(environ, launcher, key):
    with pytest.raises(ValueError, match=f"^{key}: "):
        TorchThreads(launcher=launcher, environ=environ)


def test_apply_sets_the_threads_and_logs_the_choice_once_per_process(caplog):
    callback = TorchThreads(1, environ={})
    trainer = cpu_trainer(1)
    with caplog.at_level(logging.INFO, logger="wsca_lightning.threads"):
        callback.apply(trainer)
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert torch.get_num_threads() == 1
    ours = [r.getMessage() for r in caplog.records if r.name == "wsca_lightning.threads"]
    assert ours == ["torch intra-op threads: 1 (torch_threads=1)"]


def test_train_refuses_a_bad_torch_threads_before_training(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="^torch_threads: 0 is not a whole number >= 1"):
        train(tiny_config("torch_threads=0"))
    assert not (tmp_path / "run" / "checkpoints").exists()
