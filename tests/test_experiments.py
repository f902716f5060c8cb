"""The experiment configs (conf/experiment) and what they rely on: each experiment's sweep composed job by job (what
`wsca-train -m experiment=<name>` runs), the paper's training subsets on the built-in data, the clinical columns of
the SA-SonoNet study, the k sweep setting and the cosine learning-rate schedule."""

from __future__ import annotations

import itertools
import re
from importlib.resources import files
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wsca_lightning.cli.common import instantiate_node
from wsca_lightning.cli.train import compose_train_config
from wsca_lightning.data.datamodule import SyntheticUltrasoundDataModule
from wsca_lightning.data.synthetic import REFERENCE_SIZE, sample_metadata, split_generator
from wsca_lightning.models import MultiHeadModule
from wsca_lightning.tasks import TaskSpec

EXPERIMENT_DIR = Path(str(files("wsca_lightning.conf") / "experiment"))
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
INDUCED_BIAS = {"data.subset.mode": ["full", "balanced", "biased"], "model.head_mode": ["multitask", "probe_online"],
                "seed": [0, 1, 2, 3]}
#: the conditions each experiment's header promises, as composed values; its jobs are exactly their product
CONDITIONS = {
    "induced_bias": INDUCED_BIAS,
    "fashion_induced_bias": INDUCED_BIAS,
    "k_sensitivity": {"data.subset.mode": ["balanced", "biased"], "model.head_mode": ["multitask"],
                      "seed": [0, 1, 2, 3]},
    "shortcut_sweep": {"data.shortcut_strength": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "seed": [0, 1, 2]},
    "encodability": {"seed": [0, 1, 2, 3]},
    "marker_shortcut": {"data.subset.mode": ["biased", "balanced"], "seed": [0, 1, 2]},
    "repair_scanner": {"data.subset.mode": ["biased"], "model.head_mode": ["multitask"],
                       "model.adversarial.tasks": [(), ("scanner",)], "seed": [0, 1, 2, 3]},
}
#: keys that follow the seed by interpolation (${seed}): a job's seed also draws its data and its analysis subset
SEEDED = {"data.seed", "callbacks.wsc.seed"}
#: keys that follow another key by interpolation: they may change with it, and must equal it
FOLLOWS = {"callbacks.wsc.alarm.tasks": "model.adversarial.tasks"}


def sweep_jobs(cfg: DictConfig) -> list[list[str]]:
    """The command-line overrides of every job `wsca-train -m` starts for this composed config, as Hydra's basic
    sweeper expands ``hydra.sweeper.params``."""
    params = cfg.hydra.sweeper.params or {}
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def flat(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as ``{dotted key: value}``, without Hydra's own node."""
    out: dict[str, object] = {}

    def walk(node: object, key: str) -> None:
        if isinstance(node, dict) and node:
            for name, value in node.items():
                walk(value, f"{key}.{name}" if key else str(name))
        else:
            out[key] = node

    walk(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True), "")
    return out


def instantiate_cheap_parts(cfg: DictConfig) -> None:
    """Build what a job would build before training, without rendering or reading data: the datamodule (its
    __init__ checks the whole data config), the model on two made-up tasks and the data's input shape, and every
    callback."""
    instantiate_node(cfg, "data")
    tasks = [TaskSpec("label", "categorical", ("a", "b", "c")).to_dict(),
             TaskSpec("scanner", "categorical", ("x", "y", "z")).to_dict()]
    instantiate_node(cfg, "model", tasks=tasks, primary="label",
                     input_shape=[cfg.data.in_channels, *cfg.data.image_size])
    for name, node in cfg.callbacks.items():
        if node is not None:
            instantiate_node(cfg, f"callbacks.{name}")


@pytest.fixture(scope="module")
def composed_sweeps(tmp_path_factory) -> dict[str, tuple[DictConfig, list[list[str]], dict[str, DictConfig]]]:
    """Per experiment: its composed config, every job's overrides, and the composed config of one job per distinct
    condition apart from the seed, plus the last job (another seed)."""
    out = {}
    for name in EXPERIMENTS:
        run_dir = tmp_path_factory.mktemp(name) / "run"  # one for all jobs: only what the sweep changes differs
        cfg = compose_train_config(run_dir, [f"experiment={name}"])
        jobs = sweep_jobs(cfg)
        chosen: dict[str, list[str]] = {}
        for job in jobs:
            condition = " ".join(o for o in job if not o.startswith("seed="))
            chosen.setdefault(condition, job)
        if jobs:  # the first condition with the last seed
            last_seed = [o for o in jobs[-1] if o.startswith("seed=")]
            chosen["last seed"] = [o for o in jobs[0] if not o.startswith("seed=")] + last_seed
        composed = {" ".join(job): compose_train_config(run_dir, [f"experiment={name}", *job])
                    for job in chosen.values()}
        out[name] = (cfg, jobs, composed)
    return out


def test_the_issue_experiments_are_all_there():
    assert set(CONDITIONS) | {"sasononet_cervix", "shortcut"} == set(EXPERIMENTS)


def job_values(job: list[str]) -> dict[str, object]:
    """A job's overrides as typed values (``seed=2`` -> 2, ``data.shortcut_strength=0.2`` -> 0.2)."""
    # lists as tuples, so that conditions are hashable
    return {o.key_or_group: tuple(v) if isinstance(v := o.value(), list) else v
            for o in OverridesParser.create().parse_overrides(job)}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_sweep_runs_exactly_the_conditions_its_header_promises(name, composed_sweeps):
    cfg, jobs, composed = composed_sweeps[name]
    conditions = CONDITIONS.get(name, {})
    expected = set(itertools.product(*conditions.values()))
    assert sorted(tuple(job_values(job)[key] for key in conditions) for job in jobs) == sorted(expected)
    # and each job's composed config runs its condition (every distinct condition, and a second seed)
    for job, job_cfg in composed.items():
        selected = {key: OmegaConf.select(job_cfg, key) for key in conditions}
        selected = {k: tuple(v) if OmegaConf.is_list(v) else v for k, v in selected.items()}
        assert selected == job_values(job.split()), job
    # the job count the header states ("= 24 jobs", "8 jobs:")
    stated = re.search(r"(\d+) jobs", (EXPERIMENT_DIR / f"{name}.yaml").read_text())
    if stated:
        assert int(stated.group(1)) == len(jobs)
    if conditions:
        assert f"multirun/{name}/" in cfg.hydra.sweep.dir


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_jobs_differ_only_in_the_swept_keys_and_the_seed(name, composed_sweeps):
    cfg, _, composed = composed_sweeps[name]
    reference = flat(cfg)
    swept = set(CONDITIONS.get(name, {}))
    allowed = swept | (SEEDED if "seed" in swept else set())
    for job, job_cfg in composed.items():
        values = flat(job_cfg)
        assert values.keys() == reference.keys(), job
        changed = {key for key in values if values[key] != reference[key]}
        followers = {key for key, source in FOLLOWS.items() if key in changed and source in allowed}
        assert all(values[key] == values[FOLLOWS[key]] for key in followers), job
        assert changed - followers <= allowed, job
        if "seed" in changed:
            assert {values[key] for key in SEEDED} == {values["seed"]}, job


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_condition_builds_its_data_model_and_callbacks(name, composed_sweeps):
    cfg, _, composed = composed_sweeps[name]
    if cfg.data._target_.endswith("FashionUltrasoundDataModule") and not Path(cfg.data.root).is_dir():
        pytest.skip(f"needs the Fashion-MNIST files in {cfg.data.root}")
    for job_cfg in [cfg, *composed.values()]:
        instantiate_cheap_parts(job_cfg)
    instantiate(cfg.callbacks.wsc)  # the callback settings are valid as Hydra instantiates them too


def test_what_the_experiments_set_beyond_their_sweeps(composed_sweeps):
    encodability = composed_sweeps["encodability"][0]
    assert encodability.model.head_mode == "probe_online" and encodability.callbacks.wsc.protocol == "probe_refit"
    assert {"gestational_age", "birth_weight", "preterm"} <= set(encodability.data.metadata)
    k_sensitivity = composed_sweeps["k_sensitivity"][0]
    assert list(k_sensitivity.callbacks.wsc.k_values) == [10, 20, 30, 40, 50, 75, 100, 128, 256, 512, 1024, 2048]
    fashion = composed_sweeps["fashion_induced_bias"][0]
    assert fashion.data._target_.endswith("FashionUltrasoundDataModule")
    assert fashion.model.optimizer.schedule == "cosine"  # the rest as induced_bias
    shortcut = composed_sweeps["shortcut"][0]
    assert shortcut.data.shortcut_strength == 1.0 and list(shortcut.callbacks.wsc.alarm.tasks) == ["scanner"]


def test_sasononet_cervix_gives_eight_channels_to_the_data_and_the_model(composed_sweeps):
    cfg = composed_sweeps["sasononet_cervix"][0]
    assert cfg.data.in_channels == 8 and cfg.model.backbone.in_channels == 8
    assert cfg.model.embedding == "adaptation_map" and cfg.model.backbone.name == "sononet32"


def _cell_counts(dm: SyntheticUltrasoundDataModule, split: str = "train") -> torch.Tensor:
    targets = (dm.train_dataset if split == "train" else dm.val_dataset).targets
    counts = torch.zeros(3, 3, dtype=torch.int64)
    for risk, scanner in zip(targets["risk"].tolist(), targets["scanner"].tolist()):
        counts[risk, scanner] += 1
    return counts


@pytest.fixture(scope="module")
def induced_bias_datamodules(tmp_path_factory):
    """The induced_bias experiment's three training sets (seed 0), as configured."""
    out = {}
    for mode in ("full", "balanced", "biased"):
        cfg = compose_train_config(tmp_path_factory.mktemp(mode), ["experiment=induced_bias",
                                                                   f"data.subset.mode={mode}"])
        dm = instantiate(cfg.data)
        dm.setup("fit")
        out[mode] = dm
    return out


def test_induced_bias_subsets_have_the_configured_cells_and_share_label_spaces(induced_bias_datamodules):
    full, balanced, biased = (induced_bias_datamodules[m] for m in ("full", "balanced", "biased"))
    assert len(full.train_dataset) == 2000
    assert (_cell_counts(balanced) == 93).all()
    expected = torch.full((3, 3), 42)
    expected.fill_diagonal_(196)  # risk class i comes from scanner i mod 3 in 70 % of its images
    assert torch.equal(_cell_counts(biased), expected)
    # bins and class names come from the whole pool: every mode has the same heads
    assert full.task_specs == balanced.task_specs == biased.task_specs
    # only the chosen pool rows were rendered; their ids keep the pool row number
    assert len(biased.train_dataset) == 3 * (196 + 2 * 42)
    assert set(biased.train_dataset.ids) <= set(full.train_dataset.ids)
    row = biased.train_dataset.rows[5]
    assert biased.train_dataset.ids[5] == f"train-{row:06d}"
    for name in ("risk", "scanner", "spacing"):
        assert biased.train_dataset.targets[name][5] == full.train_dataset.targets[name][row]
    # validation is subset the same way from its own pool (the paper's one test split per sub-dataset)
    assert len(full.val_dataset) == 1000
    assert (_cell_counts(balanced, "val") == 33).all()
    expected_val = torch.full((3, 3), 15)
    expected_val.fill_diagonal_(70)
    assert torch.equal(_cell_counts(biased, "val"), expected_val)
    assert set(biased.val_dataset.ids) <= set(full.val_dataset.ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marker_shortcut_ties_each_risk_class_to_one_hospital_in_a_risk_only_backbone(tmp_path, seed):
    """The experiment's design (experiments/marker_shortcut/README.md): 85 % of each risk class from "its" hospital,
    in training and validation, drawable for every seed of the sweep; the probe protocol, so that only the risk task
    shapes the backbone."""
    cfg = compose_train_config(tmp_path, ["experiment=marker_shortcut", f"seed={seed}"])
    assert cfg.model.head_mode == "probe_online"
    dm = instantiate(cfg.data)
    dm.setup("fit")

    def cells(dataset) -> torch.Tensor:
        counts = torch.zeros(3, 4, dtype=torch.int64)
        for risk, hospital in zip(dataset.targets["risk"].tolist(), dataset.targets["hospital"].tolist()):
            counts[risk, hospital] += 1
        return counts

    for dataset, major, minor in ((dm.train_dataset, 255, 15), (dm.val_dataset, 68, 4)):
        expected = torch.full((3, 4), minor)
        expected[torch.arange(3), torch.arange(3)] = major
        assert torch.equal(cells(dataset), expected)


def test_without_a_val_subset_every_mode_validates_on_the_same_unassociated_images():
    options = dict(num_train=600, num_val=60, image_size=(32, 48), metadata={"scanner": {"column": "scanner"}})
    balanced = SyntheticUltrasoundDataModule(**options, subset={"mode": "balanced", "by": "scanner", "per_cell": 40})
    biased = SyntheticUltrasoundDataModule(**options, subset={"mode": "biased", "by": "scanner", "major": 50,
                                                              "minor": 10})
    full = SyntheticUltrasoundDataModule(**options)
    for dm in (balanced, biased, full):
        dm.setup()
    assert torch.equal(balanced.val_dataset.images, biased.val_dataset.images)
    assert torch.equal(balanced.val_dataset.images, full.val_dataset.images)
    assert balanced.val_dataset.ids == [f"val-{i:06d}" for i in range(60)]


def test_a_val_subset_the_val_pool_cannot_fill_names_its_keys():
    dm = SyntheticUltrasoundDataModule(num_train=600, num_val=30, image_size=(32, 48),
                                       subset={"mode": "balanced", "by": "scanner", "per_cell": 20,
                                               "val": {"per_cell": 10}})
    with pytest.raises(ValueError) as err:
        dm.setup()
    assert "subset.val:" in str(err.value) and "lower subset.val.per_cell" in str(err.value)
    with pytest.raises(ValueError, match=r"subset.val.per_cel: unknown key"):
        SyntheticUltrasoundDataModule(subset={"mode": "balanced", "by": "scanner", "val": {"per_cel": 3}})


def test_subset_asking_more_than_the_pool_names_every_short_cell():
    dm = SyntheticUltrasoundDataModule(num_train=300, num_val=8, subset={"mode": "biased", "by": "scanner"})
    with pytest.raises(ValueError, match=r"9 of 9 cells are too small for mode=biased") as err:
        dm.setup()
    assert "primary='short' x by='scanner_A'" in str(err.value) and "lower subset.major" in str(err.value)


def test_subset_config_errors_name_their_keys():
    with pytest.raises(ValueError) as err:
        SyntheticUltrasoundDataModule(subset={"mode": "biassed", "per_cel": 3, "major": -1})
    text = str(err.value)
    assert "subset.mode: must be one of full, balanced, biased" in text
    assert "subset.per_cel: unknown key" in text and "subset.major: must be an integer >= 0" in text
    with pytest.raises(ValueError, match=r"subset.by: balanced subsets need a metadata head name; got 'site'"):
        SyntheticUltrasoundDataModule(subset={"mode": "balanced", "by": "site"})


# --- the clinical columns (SA-SonoNet study) ---------------------------------------------------------------------


def test_clinical_columns_follow_the_cervical_length_and_leave_the_other_columns_unchanged():
    options = dict(shortcut_strength=0.0, num_scanners=3, num_hospitals=4, missing_fraction=0.0)
    meta = sample_metadata(6000, generator=split_generator(0, "train"), image_size=(64, 80), **options)
    preterm = meta["preterm"].bool()
    short, normal = meta["risk"] == 0, meta["risk"] == 2
    assert preterm[short].float().mean() > 0.7 and preterm[normal].float().mean() < 0.05
    assert meta["birth_weight"][preterm].mean() < meta["birth_weight"][~preterm].mean() - 800
    assert meta["gestational_age"].min() >= 18 and meta["gestational_age"].max() < 24
    assert torch.allclose(meta["pixel_spacing_x"], meta["pixel_spacing"] * REFERENCE_SIZE[1] / 80)
    assert torch.allclose(meta["pixel_spacing_y"], meta["pixel_spacing"] * REFERENCE_SIZE[0] / 64)
    # they come from their own stream: the original columns are what they were without them
    reference = sample_metadata(6000, generator=split_generator(0, "train"), **options)
    for column in ("risk", "scanner", "hospital", "cervical_length", "pixel_spacing", "bmi"):
        assert torch.equal(meta[column], reference[column])
    blanked = sample_metadata(500, generator=split_generator(0, "train"), **{**options, "missing_fraction": 0.5})
    assert torch.equal(blanked["pixel_spacing_x"].isnan(), blanked["pixel_spacing"].isnan())
    assert blanked["birth_weight"].isnan().any() and not (blanked["preterm"] < 0).any()


def test_sasononet_cervix_primary_is_the_all_ones_head_over_the_adaptation_map(tmp_path):
    cfg = compose_train_config(tmp_path / "run", ["experiment=sasononet_cervix", "data.num_train=48",
                                                  "data.num_val=16"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.input_shape == (8, 96, 128)
    specs = dm.task_specs
    assert specs[0].name == "preterm" and specs[0].kind == "binary"
    assert {s.name for s in specs[1:]} == {"scanner", "spacing_x", "spacing_y", "cervical_length", "birth_weight",
                                           "bmi", "gestational_age"}
    model = instantiate(cfg.model, tasks=[s.to_dict() for s in specs], primary=dm.primary_task,
                        input_shape=list(dm.input_shape))
    assert model.backbone.in_channels == 8 and model.hparams.backbone["in_channels"] == 8
    weight = model.wsc_head_weights()["preterm"].weight
    # the all-ones direction (global average pooling: 1/48 each, and only directions enter a cosine)
    assert weight.shape == (1, 6 * 8) and torch.allclose(weight, torch.full_like(weight, 1 / 48))


# --- cosine schedule ---------------------------------------------------------------------------------------------


def test_cosine_schedule_anneals_the_learning_rate_to_zero_over_all_steps(tmp_path):
    dm = SyntheticUltrasoundDataModule(num_train=40, num_val=8, image_size=(32, 48), batch_size=16, metadata={})
    dm.setup()
    model = MultiHeadModule({"name": "sononet16", "in_channels": 1}, [s.to_dict() for s in dm.task_specs],
                            dm.input_shape, optimizer={"name": "adamw", "lr": 0.01, "schedule": "cosine"})
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.T_max == 6  # 2 epochs x 3 batches
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="optimizer.schedule: must be one of constant, cosine"):
        MultiHeadModule({"name": "sononet16"}, [s.to_dict() for s in dm.task_specs], dm.input_shape,
                        optimizer={"name": "adamw", "lr": 0.01, "schedule": "step"})


def test_a_null_head_removes_a_default_head():
    dm = SyntheticUltrasoundDataModule(num_train=16, num_val=8, metadata={"scanner": {"column": "scanner"},
                                                                          "hospital": None})
    assert list(dm.metadata) == ["scanner"]
