"""The multi-head module: masking of missing labels, head modes, embeddings, plain hyperparameters, validation."""

from __future__ import annotations

import io

import pytest
import torch

from wsca_lightning.models import MultiHeadModule
from wsca_lightning.models.module import masked_task_loss
from wsca_lightning.tasks import TaskSpec

TASKS = [
    TaskSpec("risk", "categorical", ("short", "intermediate", "normal")).to_dict(),
    TaskSpec("scanner", "categorical", ("a", "b", "c")).to_dict(),
    TaskSpec("spacing", "continuous", ("low", "high"), bin_edges=(0.1, 0.12, 0.14)).to_dict(),
    TaskSpec("smoker", "binary", ("no", "yes")).to_dict(),
]
BACKBONE = {"name": "sononet16", "in_channels": 1, "pretrained": None}


def make_module(**kwargs) -> MultiHeadModule:
    torch.manual_seed(0)
    args = dict(backbone=BACKBONE, tasks=TASKS, input_shape=[1, 32, 48], primary="risk")
    args.update(kwargs)
    return MultiHeadModule(**args)


def batch(n: int = 6, missing: dict[str, list[int]] | None = None) -> dict:
    g = torch.Generator().manual_seed(1)
    targets = {
        "risk": torch.randint(0, 3, (n,), generator=g),
        "scanner": torch.randint(0, 3, (n,), generator=g),
        "spacing": torch.randint(0, 2, (n,), generator=g),
        "smoker": torch.randint(0, 2, (n,), generator=g),
    }
    for task, rows in (missing or {}).items():
        targets[task][rows] = -1
    return {"image": torch.randn(n, 1, 32, 48, generator=g), "targets": targets}


def test_masked_loss_ignores_missing_labels_and_keeps_the_head_in_the_graph():
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, -1, 2, -1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], target[[0, 2]])
    assert torch.allclose(masked_task_loss(logits, target), expected)

    all_missing = masked_task_loss(logits, torch.full((4,), -1))
    assert all_missing.item() == 0.0
    all_missing.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0

    single = torch.randn(4, 1, requires_grad=True)
    bce = masked_task_loss(single, torch.tensor([1, -1, 0, 1]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(single[[0, 2, 3], 0], torch.tensor([1.0, 0, 1]))
    assert torch.allclose(bce, expected)


def test_a_batch_with_one_task_fully_missing_still_gives_every_head_a_gradient():
    module = make_module()
    loss = module._shared_step(batch(missing={"scanner": list(range(6))}), "train")
    loss.backward()
    for name, head in module.heads.items():
        assert head.weight.grad is not None, name
    assert torch.count_nonzero(module.heads["scanner"].weight.grad) == 0
    assert torch.count_nonzero(module.heads["risk"].weight.grad) > 0


def test_probe_online_metadata_heads_do_not_shape_the_backbone():
    module = make_module(head_mode="probe_online", loss_weights={"risk": 0.0})
    module._shared_step(batch(), "train").backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in module.backbone.parameters())
    assert torch.count_nonzero(module.heads["scanner"].weight.grad) > 0

    multitask = make_module(head_mode="multitask", loss_weights={"risk": 0.0})
    multitask._shared_step(batch(), "train").backward()
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in multitask.backbone.parameters())


def test_loss_weights_scale_each_head():
    base = make_module()
    weighted = make_module(loss_weights={"scanner": 3.0, "spacing": 0.0})
    b = batch()
    with torch.no_grad():
        z = base.embed(b["image"])
        logits = base.heads_forward(z)
    losses = {t: masked_task_loss(logits[t], b["targets"][t]) for t in logits}
    expected = losses["risk"] + 3.0 * losses["scanner"] + losses["smoker"]
    weighted.load_state_dict(base.state_dict())
    assert torch.allclose(weighted._shared_step(b, "val"), expected, atol=1e-5)


def test_pooled_embedding_and_heads_exposed_for_wsc():
    module = make_module()
    assert module.embedding_dim == 128
    heads = module.wsc_head_weights()
    assert list(heads) == ["risk", "scanner", "spacing", "smoker"]
    assert heads["scanner"].weight.shape == (3, 128)
    assert heads["smoker"].row_names == ("no", "yes")
    assert torch.equal(heads["scanner"].weight, module.heads["scanner"].weight)
    assert module.wsc_embed(batch(2)).shape == (2, 128)


def test_adaptation_map_embedding_uses_sononet_pooling_as_the_primary_head():
    module = make_module(embedding="adaptation_map")
    # 3 maps (one per risk class) of 2 x 3 positions for a 32 x 48 input
    assert module.embedding_dim == 18
    b = batch(2)
    z = module.embed(b["image"])
    logits = module.heads_forward(z)["risk"]
    pooled = module.backbone.forward_adaptation(b["image"]).mean(dim=(2, 3))
    assert torch.allclose(logits, pooled, atol=1e-6)
    weight = module.wsc_head_weights()["risk"].weight
    assert torch.allclose(weight[1], torch.tensor([0.0] * 6 + [1 / 6] * 6 + [0.0] * 6))
    assert "risk" not in module.heads  # nothing trainable on the primary side

    binary_primary = make_module(embedding="adaptation_map", primary="smoker")
    head = binary_primary.wsc_head_weights()["smoker"]
    # SA-SonoNet: one map, one logit; the head is the all-ones direction
    assert head.weight.shape == (1, 6) and torch.allclose(head.weight, torch.full((1, 6), 1 / 6))
    assert head.row_names == ("yes",)
    assert binary_primary(b["image"])["smoker"].shape == (2, 1)


def test_hyperparameters_are_plain_python_and_checkpoints_load_with_weights_only():
    from omegaconf import OmegaConf

    module = make_module(optimizer=OmegaConf.create({"name": "sgd", "lr": 0.01, "momentum": 0.9}))
    assert isinstance(module.hparams["optimizer"], dict)
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    rebuilt = MultiHeadModule(**loaded["hyper_parameters"])
    rebuilt.load_state_dict(loaded["state_dict"])
    assert isinstance(rebuilt.configure_optimizers(), torch.optim.SGD)


def test_adversarial_setting_is_plain_python_and_checkpoints_from_before_it_still_load():
    from omegaconf import OmegaConf

    module = make_module(adversarial=OmegaConf.create({"tasks": ["scanner"], "weight": 0.5}))
    assert module.hparams["adversarial"] == {"tasks": ["scanner"], "weight": 0.5, "schedule": "dann", "gamma": 10.0}
    assert type(module.hparams["adversarial"]["tasks"]) is list
    older = {k: v for k, v in module.hparams.items() if k != "adversarial"}  # hparams saved before the option
    assert MultiHeadModule(**older).adversarial_tasks == ()


def test_epoch_metrics_are_macro_auroc_and_balanced_accuracy_over_the_whole_epoch():
    module = make_module()
    metrics = module.val_metrics["scanner"]
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    metrics.update(probs[:2], torch.tensor([0, 1]))
    metrics.update(probs[2:], torch.tensor([2, -1]))  # the missing label is ignored
    values = metrics.compute()
    assert values["val/scanner/auroc"].item() == pytest.approx(1.0)
    assert values["val/scanner/balanced_accuracy"].item() == pytest.approx(1.0)
    metrics.reset()
    # predictions 0, 1, 2, 0 against targets 0, 0, 0, 1: recall 1/3 for class 0 and 0 for class 1; class 2 is
    # absent from the targets and left out of both means (torchmetrics' macro averages would count it as 0)
    metrics.update(probs, torch.tensor([0, 0, 0, 1]))
    values = metrics.compute()
    assert values["val/scanner/balanced_accuracy"].item() == pytest.approx(1 / 6)
    # AUROC class 0: positives 0.8, 0.1, 0.1 vs negative 0.8 -> (0.5 + 0 + 0) / 3 = 1/6;
    # class 1: positive 0.1 vs negatives 0.1, 0.8, 0.1 -> (0.5 + 0 + 0.5) / 3 = 1/3; class 2 has no positive
    assert values["val/scanner/auroc"].item() == pytest.approx((1 / 6 + 1 / 3) / 2)


def test_balanced_accuracy_metric_is_the_cores_over_the_epoch_with_missing_labels_and_diverged_scores():
    from wsca_lightning.metrics import BalancedAccuracy
    from wsca_lightning.wsc import balanced_accuracy

    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(BalancedAccuracy(3).compute())  # nothing seen
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(40, 4, generator=g), torch.randint(-1, 4, (40,), generator=g)
    metric = BalancedAccuracy(4, ignore_index=-1)
    for rows in (slice(0, 15), slice(15, 15), slice(15, 40)):  # an empty batch too
        metric.update(scores[rows], labels[rows])
    value = metric.compute()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(balanced_accuracy(scores, labels).item())
    # by hand: mean recall over the classes present among the labelled rows
    labelled = labels >= 0
    predicted, truth = scores[labelled].argmax(dim=1), labels[labelled]
    recalls = [(predicted[truth == c] == c).float().mean().item() for c in truth.unique().tolist()]
    assert value.item() == pytest.approx(sum(recalls) / len(recalls))
    # under DDP, torchmetrics' sync leaves each list state as one concatenated tensor: the same value from it
    metric._computed = None
    metric.predicted, metric.target = torch.cat(metric.predicted), torch.cat(metric.target)
    assert metric.compute().item() == pytest.approx(value.item())
    # a diverged model's NaN scores still count by their arg-max (the metric never fails an epoch)
    diverged = BalancedAccuracy(2)
    diverged.update(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    assert diverged.compute().item() == pytest.approx(1.0)


def test_every_head_is_logged_once_per_epoch_with_batch_weighted_losses_and_fresh_metrics():
    """Metadata heads are accumulated per step and logged at the epoch end; the values must equal what per-step
    logging gave: the batch-size-weighted mean loss and whole-epoch metrics, reset between epochs."""
    import lightning as L

    from wsca_lightning.metrics import MacroAUROC

    module = make_module()
    batches = [batch(6), batch(4, missing={"scanner": [0, 1]})]
    batches[1]["image"] = batches[1]["image"] + 1.0  # two different batches
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the two batches as they are
    first = trainer.validate(module, loader, verbose=False)[0]
    second = trainer.validate(module, loader, verbose=False)[0]
    assert first.keys() == second.keys() and all(first[k] == pytest.approx(second[k]) for k in first)

    module.eval()
    with torch.no_grad():
        logits = [module(b["image"]) for b in batches]
    for task in ("risk", "scanner", "smoker"):
        losses = [masked_task_loss(out[task], b["targets"][task]).item() for out, b in zip(logits, batches)]
        assert first[f"val/{task}/loss"] == pytest.approx((6 * losses[0] + 4 * losses[1]) / 10, rel=1e-5)
    auroc = MacroAUROC(3, ignore_index=-1)
    for out, b in zip(logits, batches):
        auroc.update(out["scanner"].softmax(dim=1), b["targets"]["scanner"])
    assert first["val/scanner/auroc"] == pytest.approx(auroc.compute().item(), rel=1e-5)
    assert {"val/loss", "val/spacing/balanced_accuracy", "val/smoker/auroc"} <= first.keys()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_weights": {"scannr": 1.0}}, "loss_weights.scannr: unknown head"),
        ({"loss_weights": {"scanner": -1.0}}, "loss_weights.scanner: must be a number >= 0"),
        ({"input_shape": [8, 32, 48]}, "backbone.in_channels: 1 but the data gives 8-channel"),
        ({"input_shape": [1, 30, 48]}, "input_shape:"),
        ({"primary": "nope"}, "primary: 'nope' is not a task"),
        ({"head_mode": "jointly"}, "head_mode: must be one of multitask, probe_online"),
        ({"embedding": "flat"}, "embedding: must be one of pooled, adaptation_map"),
        ({"backbone": {**BACKBONE, "name": "resnet"}}, "backbone.name: 'resnet' is not one of"),
        ({"optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99]}}, "optimizer.betas: unknown key"),
        ({"channels_last": "yes"}, "channels_last: must be true, false or null"),
        ({"compile_backbone": None}, "compile_backbone: must be true or false"),
    ],
)
def test_invalid_arguments_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        make_module(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("embedding", ["pooled", "adaptation_map"])
def test_channels_last_changes_the_memory_format_not_the_embedding_or_the_checkpoint(embedding):
    reference, module = make_module(embedding=embedding), make_module(embedding=embedding, channels_last=True)
    reference.eval(), module.eval()
    reference.on_fit_start()  # channels_last=None: on CUDA only, so not here
    module.on_fit_start()
    def second_conv(model: MultiHeadModule) -> torch.nn.Conv2d:  # (the first has one input channel: both layouts)
        return [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)][1]

    assert second_conv(module).weight.is_contiguous(memory_format=torch.channels_last)
    assert not second_conv(reference).weight.is_contiguous(memory_format=torch.channels_last)
    images = batch()["image"]
    with torch.no_grad():
        assert torch.allclose(module.embed(images), reference.embed(images), atol=1e-5)
    assert list(module.state_dict()) == list(reference.state_dict())


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_embedding_and_the_same_state_dict():
    reference, module = make_module(), make_module(compile_backbone=True)
    reference.eval(), module.eval()
    module.on_fit_start()
    assert module._compiled_forward is not None
    images = batch()["image"]
    with torch.no_grad():
        assert torch.allclose(module.embed(images), reference.embed(images), atol=1e-4)
    assert list(module.state_dict()) == list(reference.state_dict())
