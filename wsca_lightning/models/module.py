"""Multi-head LightningModule: a SonoNet or ResNet backbone, one primary (clinical) head and metadata heads.

Every head is a linear classifier on the same embedding ``z``; the WSC callback compares their weight rows
(see :mod:`wsca_lightning.interface`). Two embedding choices (paper §3.6):

* ``pooled``: ``z`` is the global-average-pooled last feature map (``d = C``: 128 / 256 / 512 for SonoNet16/32/64,
  512 / 2048 for ResNet-18/50); every head, the primary one included, is a trainable ``nn.Linear(d, classes)``.
  Backbones are listed in :mod:`wsca_lightning.models.backbones`.
* ``adaptation_map``: ``z`` is the flattened ``K x h x w`` map of SonoNet's 1x1 adaptation head and the primary head is
  SonoNet's own global average pooling, i.e. a fixed matrix whose row ``k`` averages map ``k`` (for a binary primary
  task ``K = 1`` with one logit and the row is the all-ones vector of paper §3.6). Metadata heads are linear on ``z``.
  SonoNet backbones only (ResNets have no adaptation head).

Head modes (paper §3.3): ``multitask`` trains all heads jointly with the backbone (weighted sum of losses);
``probe_online`` trains metadata heads on ``z.detach()`` so they never shape the backbone.

Repair (``adversarial``): in ``multitask``, chosen metadata heads read ``z`` through a gradient reversal layer
(:mod:`wsca_lightning.models.gradient_reversal`, domain-adversarial training): each still learns its metadata, while
the backbone is pushed to make that metadata unpredictable, removing a shortcut WSC found. Their weights stay what
the WSC callback compares, so the shared direction can be watched shrinking epoch by epoch.

Missing labels (``IGNORE_INDEX = -1``) are masked per head: the head still gets a (zero-weighted) loss term in every
step, so it never drops out of the autograd graph (which would break DDP with ``find_unused_parameters=False``).

Binary heads use two softmax logits (the paper's form) except the ``adaptation_map`` primary head, which has one
logit trained with BCE, like SA-SonoNet. All hyperparameters are plain Python values, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from wsca_lightning.interface import HeadWeights
from wsca_lightning.metrics import BalancedAccuracy, MacroAUROC
from wsca_lightning.models.gradient_reversal import ADVERSARIAL_SCHEDULES, adversarial_lambda, reverse_gradient
from wsca_lightning.models.backbones import BACKBONE_NAMES, BACKBONE_REGISTRY
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.problems import ConfigError, Problem, raise_if, switch_problems
from wsca_lightning.tasks import IGNORE_INDEX, TaskSpec

EMBEDDINGS: tuple[str, ...] = ("pooled", "adaptation_map")
HEAD_MODES: tuple[str, ...] = ("multitask", "probe_online")
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
BACKBONE_KEYS: tuple[str, ...] = ("name", "in_channels", "pretrained")
OPTIMIZER_KEYS: tuple[str, ...] = ("name", "lr", "weight_decay", "momentum", "schedule")
#: Learning-rate schedules: ``constant``, or ``cosine`` annealing to 0 over all training steps (per step), which
#: ends every run at a settled model, so accuracies of short runs can be compared across conditions.
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
DEFAULT_OPTIMIZER: dict[str, Any] = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
#: No head adversarial; the strength and schedule apply once ``tasks`` names some (keys given override these).
DEFAULT_ADVERSARIAL: dict[str, Any] = {"tasks": [], "weight": 1.0, "schedule": "dann", "gamma": 10.0}


def pooling_head_weight(num_maps: int, positions: int) -> Tensor:
    """The fixed primary head of the ``adaptation_map`` embedding: row ``k`` averages map ``k`` of the flattened
    ``num_maps x positions`` embedding (global average pooling written as a linear map)."""
    weight = torch.zeros(num_maps, num_maps * positions)
    for k in range(num_maps):
        weight[k, k * positions : (k + 1) * positions] = 1.0 / positions
    return weight


def class_probabilities(logits: Tensor) -> Tensor:
    """Per-class probabilities: softmax, or ``[1 - p, p]`` for a single-logit binary head."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def masked_task_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean loss over the samples whose label is not ``IGNORE_INDEX``; exactly 0 (still in the graph) when none is."""
    valid = target != IGNORE_INDEX
    n_valid = valid.sum().clamp(min=1)
    if logits.shape[1] == 1:
        per_sample = F.binary_cross_entropy_with_logits(
            logits[:, 0], target.clamp(min=0).to(logits.dtype), reduction="none"
        )
        return (per_sample * valid).sum() / n_valid
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid


class MultiHeadModule(L.LightningModule):
    """SonoNet or ResNet backbone + one primary head + metadata heads, trained with per-head masked losses.

    Args:
        backbone: ``{"name": one of BACKBONE_NAMES, "in_channels": int|None, "pretrained": path|None}``
            (``sononet16``/``32``/``64``, ``resnet18``, ``resnet50``; :mod:`wsca_lightning.models.backbones`);
            the backbone takes ``input_shape[0]`` channels, and an ``in_channels`` other than ``None`` must agree
            with it;
            ``pretrained`` is a state dict in the public SonoNet layout (features only are loaded) or, for a
            ResNet, in torchvision's layout (``fc.*`` ignored, an RGB ``conv1`` summed over RGB).
        tasks: task specs as dicts (:meth:`TaskSpec.to_dict`), usually ``datamodule.task_specs``.
        input_shape: ``(C, H, W)`` of the input images; ``H`` and ``W`` must be multiples of 16 (SonoNet) or
            at least 32 (ResNet).
        primary: name of the primary task (default: the first task).
        embedding: ``pooled`` or ``adaptation_map`` (module docstring; ``adaptation_map`` is SonoNet-only).
        head_mode: ``multitask`` or ``probe_online`` (module docstring).
        loss_weights: per-task loss weight (default 1.0 for every head).
        optimizer: ``{"name": "adamw"|"adam"|"sgd", "lr": float, "weight_decay": float, "momentum": float (sgd),
            "schedule": "constant"|"cosine"}`` (:data:`SCHEDULES`).
        channels_last: keep the backbone and its inputs in channels-last memory format from the start of fit;
            ``None`` (default) does so on CUDA only.
        compile_backbone: ``torch.compile`` the backbone's forward at the start of fit (state dict unchanged).
        adversarial: ``{"tasks": [metadata task, ...], "weight": float > 0, "schedule": "dann"|"constant",
            "gamma": float > 0}`` (keys left out take :data:`DEFAULT_ADVERSARIAL`): the listed metadata heads read the
            embedding through a gradient reversal layer whose strength is
            :func:`~wsca_lightning.models.gradient_reversal.adversarial_lambda` of the training progress
            (``global_step`` over the trainer's estimated total steps). ``multitask`` only.

    Logged per task and stage (``train``/``val``), per epoch: ``<stage>/<task>/loss``, ``<stage>/<task>/auroc``
    (macro one-vs-rest over the whole epoch) and ``<stage>/<task>/balanced_accuracy``, both averaged over the
    classes present in the epoch (:mod:`wsca_lightning.metrics`); plus ``<stage>/loss`` (the
    weighted sum that is optimised) and, with adversarial heads, ``train/adversarial_lambda`` (its value at the
    epoch's last step).
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        tasks: Sequence[Mapping[str, Any]],
        input_shape: Sequence[int],
        primary: str | None = None,
        embedding: str = "pooled",
        head_mode: str = "multitask",
        loss_weights: Mapping[str, float] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        channels_last: bool | None = None,
        compile_backbone: bool = False,
        adversarial: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        backbone = to_plain(backbone, "backbone")
        tasks = to_plain(tasks, "tasks")
        input_shape = [int(s) for s in to_plain(input_shape, "input_shape")]
        loss_weights = to_plain(loss_weights or {}, "loss_weights")
        optimizer = to_plain(optimizer if optimizer is not None else DEFAULT_OPTIMIZER, "optimizer")
        adversarial = {**DEFAULT_ADVERSARIAL, **to_plain(adversarial or {}, "adversarial")}
        specs = [TaskSpec.from_dict(t) for t in tasks]
        names = [s.name for s in specs]
        primary = names[0] if primary is None and names else primary
        raise_if(self._problems(backbone, specs, input_shape, primary, embedding, head_mode, loss_weights, optimizer,
                                channels_last, compile_backbone, adversarial))
        if "in_channels" in backbone and backbone["in_channels"] is None:
            # null follows the data; saved resolved, so the checkpoint's hparams name the model it holds
            backbone["in_channels"] = input_shape[0]
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "tasks": tasks,
                "input_shape": input_shape,
                "primary": primary,
                "embedding": embedding,
                "head_mode": head_mode,
                "loss_weights": loss_weights,
                "optimizer": optimizer,
                "channels_last": channels_last,
                "compile_backbone": compile_backbone,
                "adversarial": adversarial,  # in the run's hparams.yaml: which heads were trained to be unusable
            }
        )
        self.task_specs: list[TaskSpec] = specs
        self.primary_task: str = str(primary)
        self.loss_weights: dict[str, float] = {n: float(loss_weights.get(n, 1.0)) for n in names}
        self.adversarial_tasks: tuple[str, ...] = tuple(adversarial["tasks"])
        #: training progress in [0, 1] that sets the reversal strength; updated before every training step, and 1.0
        #: (full strength) for a module stepped outside a Trainer
        self.training_progress: float = 1.0
        self._total_steps: float = math.inf
        primary_spec = specs[names.index(self.primary_task)]

        channels, height, width = input_shape
        spec = BACKBONE_REGISTRY[backbone["name"]]
        map_h, map_w = height // spec.downsampling, width // spec.downsampling
        self._fixed_primary = embedding == "adaptation_map"
        # a binary primary task gets SA-SonoNet's single map / single logit; otherwise one map per class
        num_maps = (1 if primary_spec.kind == "binary" else primary_spec.num_classes) if self._fixed_primary else None
        self.backbone = spec.build(channels, num_maps)
        if backbone.get("pretrained"):
            spec.load_weights(self.backbone, backbone["pretrained"])
        self.embedding_dim = self.backbone.out_channels if not self._fixed_primary else num_maps * map_h * map_w

        self.heads = nn.ModuleDict(
            {s.name: nn.Linear(self.embedding_dim, s.num_classes) for s in specs if not self._is_fixed(s.name)}
        )
        if self._fixed_primary:
            self.register_buffer("primary_pooling", pooling_head_weight(num_maps, map_h * map_w), persistent=False)

        def metrics(stage: str) -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    s.name: MetricCollection(
                        {
                            "auroc": MacroAUROC(s.num_classes, ignore_index=IGNORE_INDEX),
                            "balanced_accuracy": BalancedAccuracy(s.num_classes, ignore_index=IGNORE_INDEX),
                        },
                        prefix=f"{stage}/{s.name}/",
                    )
                    for s in specs
                }
            )

        self.train_metrics = metrics("train")
        self.val_metrics = metrics("val")
        # metadata heads' losses, accumulated per step and logged once per epoch (_log_metadata_heads)
        def metadata_losses() -> nn.ModuleDict:
            return nn.ModuleDict({s.name: MeanMetric() for s in specs if s.name != self.primary_task})

        self.train_metadata_losses = metadata_losses()
        self.val_metadata_losses = metadata_losses()
        self._channels_last = bool(channels_last)
        self._compiled_forward: Callable[[Tensor], Tensor] | None = None

    def on_fit_start(self) -> None:
        # channels_last lets cuDNN use its NHWC tensor-core kernels under bf16/fp16; on CPU it only costs a copy
        channels_last = self.hparams.channels_last
        self._channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        if self._channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.hparams.compile_backbone and self._compiled_forward is None:
            # the forward is compiled, not the module: parameter names and checkpoints stay as they are
            self._compiled_forward = torch.compile(self._backbone_maps)

    @staticmethod
    def _problems(
        backbone: dict,
        specs: list[TaskSpec],
        input_shape: list[int],
        primary: str | None,
        embedding: str,
        head_mode: str,
        loss_weights: dict,
        optimizer: dict,
        channels_last: Any,
        compile_backbone: Any,
        adversarial: dict,
    ) -> list[Problem]:
        """Every configuration problem, each keyed by the argument it concerns (raised together by ``__init__``)."""
        problems: list[Problem] = []
        names = [s.name for s in specs]
        for key in backbone:
            if key not in BACKBONE_KEYS:
                problems.append(Problem(f"backbone.{key}", f"unknown key; valid keys: {', '.join(BACKBONE_KEYS)}"))
        backbone_name = backbone.get("name")
        spec = BACKBONE_REGISTRY.get(backbone_name) if isinstance(backbone_name, str) else None
        if spec is None:
            problems.append(Problem("backbone.name", f"{backbone_name!r} is not one of {', '.join(BACKBONE_NAMES)}"))
        in_channels = backbone.get("in_channels")
        if in_channels is not None and not is_int(in_channels):
            problems.append(Problem("backbone.in_channels",
                                    f"must be an integer, or null for the data's channels; got {in_channels!r}"))
        if len(input_shape) != 3:
            problems.append(Problem("input_shape", f"expected (channels, height, width), got {input_shape}"))
        else:
            if is_int(in_channels) and in_channels != input_shape[0]:
                problems.append(Problem(
                    "backbone.in_channels",
                    f"{in_channels} but the data gives {input_shape[0]}-channel inputs (data.in_channels); make them "
                    "agree (model=sa_sononet32 expects 8: image + 5 segmentation maps + 2 spacing)",
                ))
            try:
                if spec is not None:
                    spec.check_input_size(input_shape[1], input_shape[2])
            except ConfigError as err:
                problems.extend(p.under("input_shape") for p in err.problems)
        if not specs:
            problems.append(Problem("tasks", "at least the primary task is needed"))
        if len(set(names)) != len(names):
            problems.append(Problem("tasks", f"duplicate task names in {names}"))
        reserved = [n for n in names if hasattr(nn.ModuleDict(), n)]
        if reserved:
            problems.append(Problem("tasks", f"names {reserved} clash with torch.nn.ModuleDict attributes; rename "
                                             "those heads"))
        if names and primary not in names:
            problems.append(Problem("primary", f"{primary!r} is not a task; tasks: {', '.join(names)}"))
        if embedding not in EMBEDDINGS:
            problems.append(Problem("embedding", f"must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}"))
        elif embedding == "adaptation_map" and spec is not None and not spec.adaptation_map:
            sononets = ", ".join(n for n, s in BACKBONE_REGISTRY.items() if s.adaptation_map)
            problems.append(Problem(
                "embedding",
                f"adaptation_map needs a backbone with SonoNet's adaptation head ({sononets}); "
                f"backbone.name {backbone_name!r} has none: use embedding: pooled",
            ))
        if head_mode not in HEAD_MODES:
            problems.append(Problem("head_mode", f"must be one of {', '.join(HEAD_MODES)}, got {head_mode!r}"))
        for name, weight in loss_weights.items():
            if name not in names:
                problems.append(Problem(f"loss_weights.{name}", f"unknown head; heads: {', '.join(names)}"))
            elif not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                problems.append(Problem(f"loss_weights.{name}", f"must be a number >= 0, got {weight!r}"))
        for key in optimizer:
            if key not in OPTIMIZER_KEYS:
                problems.append(Problem(f"optimizer.{key}", f"unknown key; valid keys: {', '.join(OPTIMIZER_KEYS)}"))
        if optimizer.get("name") not in OPTIMIZERS:
            problems.append(Problem("optimizer.name",
                                    f"must be one of {', '.join(OPTIMIZERS)}, got {optimizer.get('name')!r}"))
        if not isinstance(optimizer.get("lr"), (int, float)) or optimizer.get("lr", 0) < 0:
            problems.append(Problem("optimizer.lr", f"must be a number >= 0, got {optimizer.get('lr')!r}"))
        if "momentum" in optimizer and optimizer.get("name") != "sgd":
            problems.append(Problem("optimizer.momentum", "only used by name=sgd"))
        if optimizer.get("schedule", "constant") not in SCHEDULES:
            problems.append(Problem("optimizer.schedule",
                                    f"must be one of {', '.join(SCHEDULES)}, got {optimizer.get('schedule')!r}"))
        if channels_last is not None and not isinstance(channels_last, bool):
            problems.append(Problem("channels_last", f"must be true, false or null (on CUDA only), got "
                                                     f"{channels_last!r}"))
        problems += switch_problems([("compile_backbone", compile_backbone)])
        problems.extend(MultiHeadModule._adversarial_problems(adversarial, names, primary, head_mode))
        return problems

    @staticmethod
    def _adversarial_problems(adversarial: dict, names: list[str], primary: str | None, head_mode: str
                              ) -> list[Problem]:
        """Problems of the ``adversarial`` argument (keys ``adversarial.*``)."""
        problems: list[Problem] = []
        for key in adversarial:
            if key not in DEFAULT_ADVERSARIAL:
                problems.append(Problem(f"adversarial.{key}",
                                        f"unknown key; valid keys: {', '.join(DEFAULT_ADVERSARIAL)}"))
        tasks = adversarial["tasks"]
        metadata = [n for n in names if n != primary]
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            problems.append(Problem("adversarial.tasks", f"must be a list of metadata task names, got {tasks!r}"))
        else:
            for task in tasks:
                if task == primary:
                    problems.append(Problem("adversarial.tasks", f"{task!r} is the primary task: reversing its "
                                                                 "gradient would unlearn the clinical label"))
                elif task not in names:
                    problems.append(Problem("adversarial.tasks", f"{task!r} is not a metadata task; metadata tasks: "
                                                                 f"{', '.join(metadata) or 'none'}"))
            if len(set(tasks)) != len(tasks):
                problems.append(Problem("adversarial.tasks", f"lists a task twice: {tasks}"))
            if tasks and head_mode == "probe_online":
                problems.append(Problem(
                    "adversarial.tasks",
                    "needs head_mode: multitask; with head_mode: probe_online the metadata heads read a detached "
                    "embedding, so no gradient, reversed or not, reaches the backbone",
                ))
        for key in ("weight", "gamma"):
            value = adversarial[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                problems.append(Problem(f"adversarial.{key}", f"must be a number > 0, got {value!r}"))
        if adversarial["schedule"] not in ADVERSARIAL_SCHEDULES:
            problems.append(Problem("adversarial.schedule", f"must be one of {', '.join(ADVERSARIAL_SCHEDULES)}, "
                                                            f"got {adversarial['schedule']!r}"))
        return problems

    def _is_fixed(self, task: str) -> bool:
        return self._fixed_primary and task == self.primary_task

    # --- forward -------------------------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """The embedding ``z`` (``(B, d)``) every head reads."""
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        maps = (self._compiled_forward or self._backbone_maps)(images)
        return maps.flatten(1) if self._fixed_primary else maps.mean(dim=(2, 3))

    def _backbone_maps(self, images: Tensor) -> Tensor:
        """The backbone's output maps: SonoNet's adaptation maps (``adaptation_map``) or the last feature maps."""
        if self._fixed_primary:
            return self.backbone.forward_adaptation(images)
        return self.backbone.forward_features(images)

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        """Logits of every head from the embedding (metadata heads see ``z.detach()`` in ``probe_online``, and
        adversarial heads ``z`` through the gradient reversal layer: same values, reversed gradient)."""
        detached = z.detach() if self.hparams.head_mode == "probe_online" else z
        reversed_z = reverse_gradient(z, self.adversarial_lambda()) if self.adversarial_tasks else z
        out: dict[str, Tensor] = {}
        for spec in self.task_specs:
            if self._is_fixed(spec.name):
                out[spec.name] = z @ self.primary_pooling.T
            elif spec.name == self.primary_task:
                out[spec.name] = self.heads[spec.name](z)
            else:
                out[spec.name] = self.heads[spec.name](
                    reversed_z if spec.name in self.adversarial_tasks else detached)
        return out

    def adversarial_lambda(self) -> float:
        """The gradient reversal strength at the current :attr:`training_progress`."""
        config = self.hparams.adversarial
        return adversarial_lambda(self.training_progress, config["weight"], config["schedule"], config["gamma"])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.heads_forward(self.embed(images))

    # --- training ------------------------------------------------------------------------------------------------
    def _stage_state(self, stage: str) -> tuple[nn.ModuleDict, nn.ModuleDict]:
        """The stage's metric collections (every head) and metadata-head loss means."""
        if stage == "train":
            return self.train_metrics, self.train_metadata_losses
        return self.val_metrics, self.val_metadata_losses

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        logits = self(batch["image"])
        targets = batch["targets"]
        metrics, metadata_losses = self._stage_state(stage)
        batch_size = batch["image"].shape[0]
        total = batch["image"].new_zeros(())
        for spec in self.task_specs:
            target = targets[spec.name]
            loss = masked_task_loss(logits[spec.name], target)
            total = total + self.loss_weights[spec.name] * loss
            metrics[spec.name].update(class_probabilities(logits[spec.name].detach()), target)
            if spec.name != self.primary_task:
                metadata_losses[spec.name].update(loss.detach(), weight=batch_size)
                continue
            self.log(f"{stage}/{spec.name}/loss", loss, on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
            self.log_dict(metrics[spec.name], on_step=False, on_epoch=True, batch_size=batch_size)
        self.log(f"{stage}/loss", total, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)
        return total

    def _log_metadata_heads(self, stage: str) -> None:
        """Log the metadata heads' epoch values (loss, AUROC, balanced accuracy) once, then reset them.

        The primary head and the total loss are logged every step (the WSC callback's epoch-end hook, which runs
        before this one, reads them); each metadata head's per-step ``self.log`` cost 2-4 ms of Lightning
        bookkeeping a step, about 4 % of a default CPU step (``benchmarks/callback_overhead.py``). The values are
        the same: batch-size-weighted mean losses and whole-epoch metrics, synchronised across ranks.
        """
        metrics, losses = self._stage_state(stage)
        for name, loss in losses.items():
            if loss.update_called:
                values = {f"{stage}/{name}/loss": loss.compute(), **metrics[name].compute()}
                self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)
            loss.reset()
            metrics[name].reset()

    def on_train_start(self) -> None:
        # optimizer steps of the whole fit (inf without an epoch or step limit); read once, it walks the dataloaders
        self._total_steps = float(self.trainer.estimated_stepping_batches) if self.adversarial_tasks else math.inf

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.adversarial_tasks:
            # an unbounded run has no progress to ramp over: full strength (the schedule's end) from the start
            total = self._total_steps
            self.training_progress = min(1.0, self.trainer.global_step / total) if math.isfinite(total) else 1.0

    def on_train_epoch_end(self) -> None:
        if self.adversarial_tasks:
            self.log("train/adversarial_lambda", self.adversarial_lambda(), on_step=False, on_epoch=True)
        self._log_metadata_heads("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metadata_heads("val")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def configure_optimizers(self) -> Any:
        config = dict(self.hparams.optimizer)
        optimizer_cls = OPTIMIZERS[config.pop("name")]
        schedule = config.pop("schedule", "constant")
        optimizer = optimizer_cls(self.parameters(), **config)
        if schedule == "constant":
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- the WSC interface (wsca_lightning.interface.SupportsWSC) -------------------------------------------------
    @property
    def wsc_primary_task(self) -> str:
        return self.primary_task

    @property
    def wsc_protocol(self) -> str:
        return str(self.hparams.head_mode)

    def wsc_embed(self, batch: Mapping[str, Any]) -> Tensor:
        return self.embed(batch["image"])

    def wsc_targets(self, batch: Mapping[str, Any]) -> Mapping[str, Tensor]:
        return batch["targets"]

    def wsc_head_weights(self) -> dict[str, HeadWeights]:
        heads: dict[str, HeadWeights] = {}
        for spec in self.task_specs:
            if self._is_fixed(spec.name):
                weight = self.primary_pooling
                rows = spec.class_names[1:] if weight.shape[0] == 1 else spec.class_names
            else:
                weight = self.heads[spec.name].weight
                rows = spec.class_names
            heads[spec.name] = HeadWeights(weight.detach(), tuple(rows))
        return heads
