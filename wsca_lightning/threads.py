"""How many torch intra-op threads a training process uses: its share of the machine's cores.

torch gives every process as many intra-op threads as it has cores. Two training processes on the same cores (a
multirun with a parallel launcher, two users' jobs, a benchmark beside the tests) then run twice as many busy
threads as there are cores and slow each other several times over (Lightning divides the cores among the DDP ranks
it starts, but knows nothing of other runs). So every training process takes its share (:func:`choose_threads`):

* ``torch_threads: N`` (the top-level config key) sets N threads in every process; ``null`` (the default) decides:
* ``OMP_NUM_THREADS`` in the environment, when set, is respected (torchrun and joblib's workers set it too);
* else the cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count()``) divided by the
  training processes on this machine, at least 1. Those are the local ranks of the trainer (``trainer.devices``
  of a DDP strategy) times the runs sharing the machine: ``WSCA_CONCURRENT_RUNS=N`` in the environment when set
  (this run included; for jobs the run cannot see, e.g. two users' runs or a benchmark beside the tests), else a
  multirun launcher's parallel jobs (``hydra.launcher.n_jobs``, joblib's count: -1 is one per core), else 1.
  Only the launcher's ``n_jobs`` is read; a launcher that starts several jobs without it (e.g. ``submitit_local``)
  needs ``WSCA_CONCURRENT_RUNS`` (SLURM jobs get their own cores, which the affinity already says).

A GPU process counts like a CPU one: its training math runs on the GPU, so it needs few threads while it trains,
but the WSC analysis runs beside it on the CPU with the process's thread count (``callbacks.wsc.analysis_threads:
null``), so it keeps its full share of the cores rather than a fixed small number (one GPU process on a machine
alone keeps every core, as before). DataLoader workers are not counted: torch gives each one thread.

:class:`TorchThreads` applies the choice with ``torch.set_num_threads`` in its ``setup`` hook, which runs in every
rank (also in the children ``ddp_spawn`` starts), and logs it once, e.g. ``torch intra-op threads: 1 (2 cores
shared by 2 local processes: 2 DDP ranks; set torch_threads=N to change)``. It reads the environment when it is
created, in the process that launches the ranks, so the ``OMP_NUM_THREADS`` Lightning sets for its ranks is not
mistaken for the user's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import lightning as L
import torch

from wsca_lightning.plain import is_int
from wsca_lightning.problems import ConfigError

log = logging.getLogger(__name__)

CONFIG_KEY = "torch_threads"
#: How many runs share this machine's cores, this one included (replaces the launcher's count when set).
CONCURRENT_RUNS_ENV = "WSCA_CONCURRENT_RUNS"
OMP_ENV = "OMP_NUM_THREADS"


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (Linux; it follows taskset, cgroups
    and SLURM's allocation), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def whole_number(value: Any, name: str, fix: str) -> int | None:
    """``value`` as a whole number >= 1, ``None`` for ``None``; a ``ValueError`` naming ``name`` otherwise. Strings
    (from the environment) are parsed; ``fix`` says what to do instead."""
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    # 2.0 is no thread count: only real integers pass (is_int also refuses True)
    if not is_int(number) or number < 1:
        raise ConfigError.at(name, f"{value!r} is not a whole number >= 1; {fix}")
    return number


def parallel_jobs(n_jobs: Any, cores: int) -> int:
    """How many jobs of a multirun run at once on this machine, from the launcher's ``n_jobs``
    (``hydra.launcher.n_jobs``, joblib's meaning: negative is ``cores + 1 + n_jobs``, so -1 is one per core); 1 for
    ``None``: a launcher without ``n_jobs`` (the basic one runs one job at a time), or no multirun."""
    if n_jobs is None:
        return 1
    if not is_int(n_jobs) or n_jobs == 0:
        raise ConfigError.at("hydra.launcher.n_jobs", f"{n_jobs!r} is not a whole number other than 0")
    return max(1, cores + 1 + n_jobs) if n_jobs < 0 else n_jobs


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why: ``source`` is ``torch_threads``, ``OMP_NUM_THREADS`` or ``share``."""

    threads: int
    source: str
    detail: str

    def message(self) -> str:
        """The log line, e.g. ``torch intra-op threads: 1 (2 cores shared by 2 local processes: 2 DDP ranks; set
        torch_threads=N to change)``."""
        if self.source == CONFIG_KEY:
            return f"torch intra-op threads: {self.threads} ({CONFIG_KEY}={self.threads})"
        return f"torch intra-op threads: {self.threads} ({self.detail}; set {CONFIG_KEY}=N to change)"


def choose_threads(override: int | None, *, cores: int, local_ranks: int = 1, concurrent_runs: int = 1,
                   runs_from: str = "", omp_num_threads: int | None = None) -> ThreadChoice:
    """The rule of this module: ``override`` if given, else ``omp_num_threads`` if given, else ``cores`` divided
    by ``local_ranks * concurrent_runs`` processes, at least 1. ``runs_from`` names where ``concurrent_runs`` came
    from, for the message."""
    if override is not None:
        return ThreadChoice(override, CONFIG_KEY, "")
    if omp_num_threads is not None:
        return ThreadChoice(omp_num_threads, OMP_ENV, f"{OMP_ENV}={omp_num_threads} in the environment")
    processes = local_ranks * concurrent_runs
    threads = max(1, cores // processes)
    detail = f"{cores} core{'s' * (cores != 1)} shared by {processes} local process{'es' * (processes != 1)}"
    parts = ([f"{local_ranks} DDP ranks"] if local_ranks > 1 else []) + (
        [f"{concurrent_runs} runs ({runs_from})"] if concurrent_runs > 1 else [])
    if parts:
        detail += ": " + " x ".join(parts)
    return ThreadChoice(threads, "share", detail)


class TorchThreads(L.Callback):
    """Sets every training process's torch intra-op threads to :func:`choose_threads`'s count (in ``setup``, which
    runs in every rank) and logs the choice once, on global rank zero.

    Args:
        torch_threads: the user's count (the ``torch_threads`` config key); ``None`` decides automatically.
        launcher: the multirun launcher's config (``hydra.launcher``), whose ``n_jobs`` counts parallel runs;
            ``None`` outside a multirun.
        environ: the environment to read ``OMP_NUM_THREADS`` and ``WSCA_CONCURRENT_RUNS`` from (``os.environ``),
            read now: create the callback in the process that starts the ranks.

    Raises:
        ValueError: naming ``torch_threads``, ``OMP_NUM_THREADS``, ``WSCA_CONCURRENT_RUNS`` or
            ``hydra.launcher.n_jobs`` when one is not a whole number >= 1.
    """

    def __init__(self, torch_threads: Any = None, launcher: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.torch_threads = whole_number(torch_threads, CONFIG_KEY, "set a thread count, or null to share the "
                                          "cores among the training processes automatically")
        # an empty variable is an unset one (as for torch and OpenMP)
        self.omp_num_threads = whole_number(environ.get(OMP_ENV) or None, OMP_ENV,
                                            f"set a thread count or unset it (or set {CONFIG_KEY}=N)")
        self.concurrent_runs = whole_number(environ.get(CONCURRENT_RUNS_ENV) or None, CONCURRENT_RUNS_ENV,
                                            "set how many runs share this machine's cores, this one included")
        self.launcher_jobs = None if launcher is None else launcher.get("n_jobs")
        parallel_jobs(self.launcher_jobs, available_cores())  # validated now; resolved in each rank (its cores)
        self._logged_in_pid: int | None = None

    def choose(self, trainer: L.Trainer) -> ThreadChoice:
        """This process's choice for ``trainer`` (its ``num_devices`` are the local ranks)."""
        cores = available_cores()
        if self.concurrent_runs is not None:
            runs, runs_from = self.concurrent_runs, f"{CONCURRENT_RUNS_ENV}={self.concurrent_runs}"
        else:
            runs, runs_from = parallel_jobs(self.launcher_jobs, cores), "hydra.launcher.n_jobs"
        return choose_threads(self.torch_threads, cores=cores, local_ranks=max(1, trainer.num_devices),
                              concurrent_runs=runs, runs_from=runs_from, omp_num_threads=self.omp_num_threads)

    def apply(self, trainer: L.Trainer) -> ThreadChoice:
        """Set this process's threads; log the choice on global rank zero, once per process. Called in the
        launching process too, so the run's log (written there) records it when ``ddp_spawn`` trains in children."""
        choice = self.choose(trainer)
        torch.set_num_threads(choice.threads)
        if trainer.is_global_zero and self._logged_in_pid != os.getpid():
            log.info(choice.message())
            self._logged_in_pid = os.getpid()
        return choice

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.apply(trainer)
