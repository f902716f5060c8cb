"""Repair of a detected shortcut: the gradient reversal's sign and schedule, the module's adversarial heads, their
configuration problems, and a tiny fit that logs the reversal strength while WSC keeps measuring the repaired head."""

from __future__ import annotations

import math

import pytest
import torch

from wsca_lightning.cli.train import train
from wsca_lightning.models import MultiHeadModule
from wsca_lightning.models.gradient_reversal import adversarial_lambda, reverse_gradient
from wsca_lightning.models.module import masked_task_loss

from test_module import batch, make_module


def test_reversal_is_the_identity_forward_and_minus_scale_times_the_gradient_backward():
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(4, 3)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    (y @ w).square().sum().backward()
    reversed_grad = x.grad.clone()
    x.grad = None
    (x @ w).square().sum().backward()
    assert torch.allclose(reversed_grad, -0.7 * x.grad)


def test_an_adversarial_head_sends_the_backbone_minus_lambda_times_its_gradient_and_keeps_its_own():
    """Only the scanner head's loss: the backbone's gradient flips sign and scales by lambda, the head's does not."""
    plain = make_module()
    repaired = make_module(adversarial={"tasks": ["scanner"], "schedule": "constant", "weight": 0.5})
    assert repaired.adversarial_lambda() == 0.5
    data = batch()
    grads = {}
    for name, module in (("plain", plain), ("repaired", repaired)):
        loss = masked_task_loss(module(data["image"])["scanner"], data["targets"]["scanner"])
        loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    backbone = [n for n in grads["plain"] if n.startswith("backbone.")]
    assert backbone and backbone == [n for n in grads["repaired"] if n.startswith("backbone.")]
    for n in backbone:
        assert torch.allclose(grads["repaired"][n], -0.5 * grads["plain"][n], atol=1e-7), n
    for n in ("heads.scanner.weight", "heads.scanner.bias"):
        assert torch.allclose(grads["repaired"][n], grads["plain"][n])


def test_the_primary_head_and_other_metadata_heads_are_not_reversed():
    plain = make_module()
    repaired = make_module(adversarial={"tasks": ["scanner"], "schedule": "constant"})
    data = batch()
    for module in (plain, repaired):
        out = module(data["image"])
        loss = masked_task_loss(out["risk"], data["targets"]["risk"]) + masked_task_loss(
            out["spacing"], data["targets"]["spacing"])
        loss.backward()
    for (n, p), (_, q) in zip(plain.named_parameters(), repaired.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad), n
    # and the forward pass is unchanged: the same logits for every head
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain(data["image"]).values(), repaired(data["image"]).values()))


def test_dann_schedule_rises_from_zero_to_the_weight():
    assert adversarial_lambda(0.0, 2.0, "dann", 10.0) == 0.0
    for p in (0.1, 0.25, 0.5):
        assert adversarial_lambda(p, 2.0, "dann", 10.0) == pytest.approx(2.0 * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1))
    assert adversarial_lambda(0.1, 1.0, "dann", 10.0) == pytest.approx(math.tanh(0.5))
    assert adversarial_lambda(1.0, 2.0, "dann", 10.0) == pytest.approx(2.0 * math.tanh(5.0))
    assert adversarial_lambda(1.0, 1.0, "dann", 100.0) == pytest.approx(1.0)
    assert adversarial_lambda(3.0, 1.0, "dann", 10.0) == adversarial_lambda(1.0, 1.0, "dann", 10.0)  # clamped
    values = [adversarial_lambda(i / 10, 1.0, "dann", 10.0) for i in range(11)]
    assert values == sorted(values)


def test_constant_schedule_is_the_weight_from_the_first_step():
    assert adversarial_lambda(0.0, 0.3, "constant") == 0.3
    assert adversarial_lambda(1.0, 0.3, "constant") == 0.3
    with pytest.raises(ValueError, match="schedule must be one of constant, dann"):
        adversarial_lambda(0.5, 1.0, "linear")


def test_the_module_reads_its_progress_and_keeps_the_setting_in_its_hyperparameters():
    module = make_module(adversarial={"tasks": ["scanner"]})
    assert module.hparams.adversarial == {"tasks": ["scanner"], "weight": 1.0, "schedule": "dann", "gamma": 10.0}
    module.training_progress = 0.0
    assert module.adversarial_lambda() == 0.0
    module.training_progress = 0.3
    assert module.adversarial_lambda() == pytest.approx(adversarial_lambda(0.3, 1.0, "dann", 10.0))
    reloaded = MultiHeadModule(**module.hparams)
    assert reloaded.adversarial_tasks == ("scanner",)
    assert make_module().adversarial_tasks == ()


@pytest.mark.parametrize(
    ("adversarial", "kwargs", "message"),
    [
        ({"tasks": ["scannr"]}, {}, "adversarial.tasks: 'scannr' is not a metadata task; metadata tasks: scanner, "
                                    "spacing, smoker"),
        ({"tasks": ["risk"]}, {}, "adversarial.tasks: 'risk' is the primary task"),
        ({"tasks": "scanner"}, {}, "adversarial.tasks: must be a list of metadata task names"),
        ({"tasks": ["scanner", "scanner"]}, {}, "adversarial.tasks: lists a task twice"),
        ({"tasks": ["scanner"]}, {"head_mode": "probe_online"}, "adversarial.tasks: needs head_mode: multitask"),
        ({"weight": 0}, {}, "adversarial.weight: must be a number > 0, got 0"),
        ({"gamma": -1.0}, {}, "adversarial.gamma: must be a number > 0, got -1.0"),
        ({"schedule": "linear"}, {}, "adversarial.schedule: must be one of constant, dann, got 'linear'"),
        ({"lambda": 1.0}, {}, "adversarial.lambda: unknown key; valid keys: tasks, weight, schedule, gamma"),
    ],
)
def test_invalid_adversarial_settings_name_the_key(adversarial, kwargs, message):
    with pytest.raises(ValueError) as err:
        make_module(adversarial=adversarial, **kwargs)
    assert message in str(err.value)


def test_a_bad_setting_from_the_app_is_keyed_under_model(tiny_config):
    with pytest.raises(ValueError) as err:
        train(tiny_config("model.adversarial.tasks=[scannr]"))
    assert "model.adversarial.tasks: 'scannr' is not a metadata task" in str(err.value)


def test_a_tiny_repaired_fit_logs_lambda_rising_and_wsc_still_compares_the_adversarial_head(tiny_config):
    """The alarm guards the repaired tasks by interpolation, as experiment=repair_scanner sets it."""
    result = train(tiny_config("model.adversarial.tasks=[scanner]", "callbacks.wsc.alarm.tasks=${model.adversarial.tasks}",
                               "callbacks.wsc.save_plots=false", "data.image_size=[32,48]"))
    summary = result["summary"]
    assert "scanner" in summary["history"][-1]["tasks"] and len(summary["history"]) == 2
    lam = result["metrics"]["train/adversarial_lambda"]
    assert 0.0 < lam < 1.0  # the dann ramp, at the last step's progress, before its end
