"""Shared test helpers: compose the real Hydra config the way `wsca-train` does, on tiny data."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from omegaconf import DictConfig

# CI replays the same property-test examples on every run (a landing never hangs on a newly drawn example);
# local runs keep drawing new ones, which is where counterexamples are found.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the most end-to-end (``slow``) tests first. Under pytest-xdist (``make test``: ``--dist
    loadfile``) whole files go to the workers in this order, so the longest start first and the workers finish
    together instead of one running the last long file alone. The order within a file is kept."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


# small enough for seconds per epoch on 2 CPU cores, large enough for a PCA of the 128-d SonoNet16 embedding
TINY = [
    "data.image_size=[32,48]",  # a third of the default's pixels: the tests check plumbing, not accuracy
    "data.num_train=96",
    "data.num_val=48",
    "data.batch_size=32",
    "callbacks.wsc.subset_size=64",
    "callbacks.wsc.batch_size=64",
    # a fifth of the default nulls and bootstrap: the smallest p is 1/21, still below 0.05
    "callbacks.wsc.num_permutations=20",
    "callbacks.wsc.num_bootstrap=50",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def tiny_config(tmp_path: Path):
    # imported here, not at the top: pytest-xdist's controller loads this file too, and never trains
    from wsca_lightning.cli.train import compose_train_config

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_train_config(output_dir or tmp_path / "run", [*TINY, *overrides])

    return make
