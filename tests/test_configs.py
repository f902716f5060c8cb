"""Every config file in conf/ composes, and every key it sets exists.

Each group option, experiment and entry config is composed the way `wsca-train` / `wsca-analyze` compose it. Every
node with a ``_target_`` may only set keys its target's signature takes (unless it takes ``**kwargs``), at any
depth; the nested plain dicts a target takes (``model.backbone``, ``model.optimizer``, ``callbacks.wsc.alarm``,
``data.metadata`` ...) are checked by the class itself, by instantiating the composed model, data and callbacks
where that is cheap (no data is rendered or read, nothing trains). A key that no longer exists, like the
``model.compile`` the GPU trainer config once named, fails here.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

import hydra
import pytest
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.cli.common import instantiate_node, unknown_keys
from wsca_lightning.cli.train import compose_train_config
from wsca_lightning.tasks import TaskSpec

CONF = Path(str(files("wsca_lightning.conf")))
#: the groups of train.yaml's defaults list; each option is composed on its own
TRAIN_GROUPS = ("data", "model", "callbacks", "logger", "trainer", "paths", "experiment")
#: not options: inherited by every model config (its defaults list pulls it in)
INHERITED = {"base/model.yaml"}
HAS_SLURM_LAUNCHER = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


COMPOSITIONS: list[tuple[str, tuple[str, ...]]] = [
    ("train", ()),
    *(("train", (f"{group}={option}",)) for group in TRAIN_GROUPS for option in options(group)),
    ("train", ("hydra/launcher=slurm",)),
    ("analyze", ()),
    *(("analyze", (f"data={option}",)) for option in options("data")),
]


def composition_id(composition: tuple[str, tuple[str, ...]]) -> str:
    name, overrides = composition
    return " ".join((name, *overrides))


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """Compose each (entry config, overrides) once for the whole module (composition is most of the time here)."""
    run_dir = tmp_path_factory.mktemp("configs") / "run"
    cache: dict[tuple[str, tuple[str, ...]], DictConfig] = {}

    def composed(name: str, overrides: tuple[str, ...]) -> DictConfig:
        if "hydra/launcher=slurm" in overrides and not HAS_SLURM_LAUNCHER:
            pytest.skip("needs the slurm extra (hydra-submitit-launcher)")
        if (name, overrides) not in cache:
            cache[name, overrides] = compose_train_config(run_dir, list(overrides), config_name=name)
        return cache[name, overrides]

    return composed


def stale_keys(cfg: DictConfig) -> list[str]:
    """Every key, at any depth outside Hydra's own node, that the ``_target_`` of its node does not take; plus the
    nodes Hydra instantiates from our configs (``hydra.callbacks``, ``hydra.launcher``, ``hydra.sweeper``)."""
    found: list[str] = []

    def walk(node: object, key: str) -> None:
        if OmegaConf.is_dict(node) and not node._is_none():
            if "_target_" in node:
                hydra.utils.get_object(node["_target_"])  # a target that does not import fails here
                found.extend(problem.key for problem in unknown_keys(node, key, set()))
            for name in node:
                walk(node._get_node(name), f"{key}.{name}" if key else str(name))
        elif OmegaConf.is_list(node) and not node._is_none():
            for index, item in enumerate(node):
                walk(item, f"{key}[{index}]")

    for name in cfg:
        if name != "hydra":
            walk(cfg._get_node(name), str(name))
    for name in ("callbacks", "launcher", "sweeper"):
        walk(cfg.hydra._get_node(name), f"hydra.{name}")
    return found


def test_every_config_file_is_composed_here():
    composed = {"train.yaml", "analyze.yaml", "hydra/default.yaml", "hydra/launcher/slurm.yaml", *INHERITED}
    composed |= {f"{group}/{option}.yaml" for group in TRAIN_GROUPS for option in options(group)}
    on_disk = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert on_disk == composed


@pytest.mark.parametrize("composition", COMPOSITIONS, ids=composition_id)
def test_every_key_a_config_sets_exists(composition, compose):
    cfg = compose(*composition)
    assert stale_keys(cfg) == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+model.compile=true", "model.compile"),  # the key trainer/gpu.yaml once named (now compile_backbone)
        ("+trainer.gpus=1", "trainer.gpus"),
        ("+callbacks.wsc.every_n_epoch=2", "callbacks.wsc.every_n_epoch"),
        ("+hydra.callbacks.run_directory.path=x", "hydra.callbacks.run_directory.path"),
    ],
)
def test_a_stale_key_is_found(override, key, tmp_path):
    assert stale_keys(compose_train_config(tmp_path / "run", [override])) == [key]


@pytest.mark.parametrize(
    ("node", "override", "key"),
    [
        ("model", "+model.optimizer.betas=[0.9,0.99]", "model.optimizer.betas"),
        ("model", "+model.backbone.width=32", "model.backbone.width"),
        ("callbacks.wsc", "+callbacks.wsc.alarm.pateince=3", "callbacks.wsc.alarm.pateince"),
        ("data", "+data.metadata.scanner.bin=4", "data.metadata.scanner.bin"),
    ],
)
def test_a_stale_nested_key_fails_where_its_class_checks_it(node, override, key, tmp_path):
    cfg = compose_train_config(tmp_path / "run", [override])
    with pytest.raises(ValueError) as err:
        instantiate_cheap(cfg, node)
    assert f"{key}: unknown key" in str(err.value)


TASKS = [
    TaskSpec("label", "categorical", ("a", "b", "c")).to_dict(),
    TaskSpec("scanner", "categorical", ("x", "y")).to_dict(),
]


def instantiate_cheap(cfg: DictConfig, key: str) -> object:
    """Instantiate one composed node the way `wsca-train` does, without data: the model gets two made-up tasks
    and the data's input shape."""
    if key == "model":
        shape = [cfg.data.in_channels, *cfg.data.image_size] if "data" in cfg else [1, 64, 80]
        return instantiate_node(cfg, "model", tasks=TASKS, primary="label", input_shape=shape)
    return instantiate_node(cfg, key)


def cheap_nodes(cfg: DictConfig) -> list[str]:
    """The nodes of a composed config that build in well under a second and read nothing: the model, the
    callbacks, and the built-in data (Fashion-MNIST where its files are installed; a manifest needs a table)."""
    nodes = []
    if "model" in cfg:
        nodes.append("model")
    target = cfg.data.get("_target_", "") if "data" in cfg else ""
    if target.endswith("SyntheticUltrasoundDataModule") or (target.endswith("FashionUltrasoundDataModule")
                                                            and FASHION_ROOT.is_dir()):
        nodes.append("data")
    group = cfg.get("callbacks") or {}
    nodes += [f"callbacks.{name}" for name, node in group.items() if node is not None]
    if "wsc" in cfg:  # wsca-analyze: the callback's settings at the top level
        nodes.append("wsc")
    return nodes


@pytest.mark.parametrize("composition", [c for c in COMPOSITIONS if not any(
    o.startswith(("logger=", "trainer=", "paths=", "hydra/")) for o in c[1])], ids=composition_id)
def test_composed_model_data_and_callbacks_instantiate(composition, compose):
    cfg = compose(*composition)
    nodes = cheap_nodes(cfg)
    assert nodes
    for key in nodes:
        instantiate_cheap(cfg, key)


# --- input channels: the data decides them; SA-SonoNet sets both sides ------------------------------------------


@pytest.mark.parametrize("data", ["synthetic", "manifest"])
def test_sa_sononet32_alone_gives_eight_channel_data_and_an_eight_channel_model(data, compose):
    cfg = compose("train", (f"data={data}", "model=sa_sononet32"))
    assert cfg.data.in_channels == 8 and cfg.model.backbone.in_channels == 8
    plain = compose("train", (f"data={data}",))
    assert plain.data.in_channels == 1 and plain.model.backbone.in_channels is None  # null: the data's channels
    model = instantiate_cheap(cfg, "model")
    assert model.backbone.in_channels == 8 and model.hparams.backbone["in_channels"] == 8
    assert instantiate_cheap(plain, "model").hparams.backbone["in_channels"] == 1  # saved resolved


@pytest.mark.parametrize("overrides", [("model.backbone.in_channels=8",), ("model=sa_sononet32", "data.in_channels=1")])
def test_a_model_whose_channels_disagree_with_the_data_names_both_keys(overrides, compose):
    cfg = compose("train", overrides)
    with pytest.raises(ValueError) as err:
        instantiate_cheap(cfg, "model")
    assert "model.backbone.in_channels: 8 but the data gives 1-channel inputs (data.in_channels)" in str(err.value)
