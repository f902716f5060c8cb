"""Analysis defaults have one home: ``wsca_lightning.wsc.AnalysisSettings``. The callback's constructor takes its
defaults from it, and ``conf/callbacks/wsc.yaml`` mirrors every constructor default."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import yaml

from wsca_lightning.callbacks import WeightSpaceCorrelation
from wsca_lightning.epoch_analysis import AlarmSettings
from wsca_lightning.wsc import AnalysisSettings

WSC_YAML = Path(__file__).resolve().parents[1] / "conf" / "callbacks" / "wsc.yaml"


def _constructor_defaults() -> dict:
    return {name: p.default for name, p in inspect.signature(WeightSpaceCorrelation.__init__).parameters.items()
            if name != "self"}


def _yaml_node() -> dict:
    return yaml.safe_load(WSC_YAML.read_text(encoding="utf-8"))["wsc"]


def test_the_callback_takes_its_analysis_defaults_from_analysis_settings():
    defaults = _constructor_defaults()
    for f in dataclasses.fields(AnalysisSettings):
        assert defaults[f.name] == getattr(AnalysisSettings(), f.name), f.name
    assert WeightSpaceCorrelation().settings == AnalysisSettings()


def test_the_yaml_analysis_keys_equal_the_analysis_settings_defaults():
    node = _yaml_node()
    for f in dataclasses.fields(AnalysisSettings):
        if f.name == "seed":  # ${seed}: the run's seed
            assert node["seed"] == "${seed}"
            continue
        value = node[f.name]
        expected = getattr(AnalysisSettings(), f.name)
        assert (tuple(value) if isinstance(value, list) else value) == expected, f.name


def test_the_yaml_mirrors_every_other_constructor_default():
    node = _yaml_node()
    analysis = {f.name for f in dataclasses.fields(AnalysisSettings)}
    defaults = _constructor_defaults()
    assert node["_target_"] == "wsca_lightning.callbacks.WeightSpaceCorrelation"
    assert set(node) - {"_target_"} == set(defaults), "wsc.yaml keys and the constructor's arguments differ"
    for name, default in defaults.items():
        if name in analysis or name == "dirpath":  # dirpath: the run directory's wsc/ (an interpolation)
            continue
        if name == "alarm":  # None in Python: the AlarmSettings defaults, spelled out in the YAML
            assert node["alarm"] == AlarmSettings().to_dict()
            continue
        assert node[name] == default, name
