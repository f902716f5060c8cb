"""torchvision ResNet-18/50 backbones: architecture, the module with a ResNet, torchvision-layout weight loading,
the backbone registry and the `model=resnet18` / `model=resnet50` configs."""

from __future__ import annotations

import io
import json
import os

import hydra
import pytest
import torch
import torchvision

from wsca_lightning.cli.train import ConfigError, compose_train_config, train
from wsca_lightning.models import MultiHeadModule
from wsca_lightning.models.backbones import BACKBONE_NAMES, BACKBONE_REGISTRY, build_backbone
from wsca_lightning.models.resnet import (
    RESNET_OUT_CHANNELS,
    ResNetBackbone,
    build_resnet,
    check_resnet_input_size,
    load_resnet_weights,
)
from wsca_lightning.tasks import TaskSpec

TASKS = [
    TaskSpec("risk", "categorical", ("short", "intermediate", "normal")).to_dict(),
    TaskSpec("scanner", "categorical", ("a", "b", "c")).to_dict(),
    TaskSpec("smoker", "binary", ("no", "yes")).to_dict(),
]
RESNET18 = {"name": "resnet18", "in_channels": 1, "pretrained": None}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def torchvision_state(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision state dict (3-channel conv1, fc included) whose values, BN statistics included, differ from a
    fresh model's."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    gen = torch.Generator().manual_seed(seed + 1)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.is_floating_point() and value.dim() == 1:  # BN affine parameters and running means
            value = value + 0.1 * torch.randn(value.shape, generator=gen)
        state[key] = value.clone()
    return state


def make_module(**kwargs) -> MultiHeadModule:
    torch.manual_seed(0)
    args = dict(backbone=RESNET18, tasks=TASKS, input_shape=[1, 64, 80], primary="risk")
    args.update(kwargs)
    return MultiHeadModule(**args)


def batch(n: int = 4, shape=(1, 64, 80)) -> dict:
    g = torch.Generator().manual_seed(1)
    targets = {
        "risk": torch.randint(0, 3, (n,), generator=g),
        "scanner": torch.randint(0, 3, (n,), generator=g),
        "smoker": torch.randint(0, 2, (n,), generator=g),
    }
    return {"image": torch.randn(n, *shape, generator=g), "targets": targets}


# --- architecture ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "in_channels"), [("resnet18", 1), ("resnet18", 3), ("resnet50", 1)])
def test_parameter_counts_are_torchvisions_minus_fc_with_conv1_resized(name, in_channels):
    reference = getattr(torchvision.models, name)(weights=None)
    conv1 = reference.conv1.weight
    expected = n_params(reference) - n_params(reference.fc) - conv1.numel() + conv1[:, :1].numel() * in_channels
    model = build_resnet(name, in_channels=in_channels)
    assert n_params(model) == expected
    if (name, in_channels) == ("resnet18", 1):
        assert expected == 11_170_240  # 11_689_512 - fc 513_000 - 2 of 3 conv1 input channels (6_272)
    assert model.conv1.weight.shape == (64, in_channels, 7, 7)
    assert (model.conv1.stride, model.conv1.padding, model.conv1.bias) == ((2, 2), (3, 3), None)


def test_state_dict_keys_are_torchvisions_without_fc():
    reference = torchvision.models.resnet18(weights=None).state_dict()
    model = build_resnet("resnet18", in_channels=1).state_dict()
    assert list(model) == [k for k in reference if not k.startswith("fc.")]
    assert not hasattr(build_resnet("resnet18"), "fc") and not hasattr(build_resnet("resnet18"), "avgpool")


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("resnet18", (64, 80), (512, 2, 3)),
    ("resnet18", (33, 47), (512, 2, 2)),  # any size >= 32: the map is ceil(H/32) x ceil(W/32)
    ("resnet50", (64, 64), (2048, 2, 2)),
])
def test_forward_features_shape_and_out_channels(name, size, expected):
    torch.manual_seed(0)
    model = build_resnet(name, in_channels=1).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 1, *size))
    assert feats.shape == (1, *expected)
    assert model.out_channels == RESNET_OUT_CHANNELS[name] == expected[0]
    assert model.feature_map_size(*size) == expected[1:]
    assert torch.equal(model(torch.zeros(1, 1, *size)), model.forward_features(torch.zeros(1, 1, *size)))


def test_wrong_channel_count_and_bad_arguments_are_reported():
    model = build_resnet("resnet18", in_channels=1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got \(2, 3, 64, 64\)"):
        model.forward_features(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="resnet18, resnet50"):
        ResNetBackbone("resnet34")
    with pytest.raises(ValueError, match="in_channels"):
        ResNetBackbone("resnet18", in_channels=0)


def test_input_size_check_is_at_least_32_and_names_the_size():
    check_resnet_input_size(32, 100)
    with pytest.raises(ValueError, match=r"image size \[16, 64\]: height 16 must be >= 32"):
        check_resnet_input_size(16, 64)


def test_nothing_is_ever_downloaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    build_resnet("resnet18")
    build_backbone("resnet50", in_channels=1)


# --- registry -------------------------------------------------------------------------------------------------------


def test_registry_lists_every_backbone_once_and_the_configs_use_it(tmp_path):
    assert BACKBONE_NAMES == ("sononet16", "sononet32", "sononet64", "resnet18", "resnet50")
    assert [BACKBONE_REGISTRY[n].adaptation_map for n in BACKBONE_NAMES] == [True] * 3 + [False] * 2
    conf_dir = os.path.join(os.path.dirname(__file__), "..", "conf", "model")
    for config in sorted(f[:-5] for f in os.listdir(conf_dir) if f.endswith(".yaml")):
        cfg = compose_train_config(tmp_path, [f"model={config}"])
        assert cfg.model.backbone.name in BACKBONE_NAMES, config
    with pytest.raises(ValueError, match="has no adaptation head"):
        build_backbone("resnet18", 1, adaptation_channels=3)


# --- the module with a ResNet ---------------------------------------------------------------------------------------


def test_module_with_resnet18_trains_one_step_and_exposes_d_512_for_wsc():
    module = make_module()
    assert module.embedding_dim == 512
    b = batch()
    optimizer = module.configure_optimizers()
    conv1_before = module.backbone.conv1.weight.detach().clone()
    loss = module._shared_step(b, "train")
    assert torch.isfinite(loss)
    loss.backward()
    for name, head in module.heads.items():
        assert head.weight.grad is not None and torch.count_nonzero(head.weight.grad) > 0, name
    for param in (module.backbone.conv1.weight, module.backbone.layer4[-1].conv2.weight):
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0
    optimizer.step()
    assert not torch.equal(module.backbone.conv1.weight, conv1_before)

    heads = module.wsc_head_weights()
    assert list(heads) == ["risk", "scanner", "smoker"]
    assert heads["risk"].weight.shape == (3, 512) and heads["smoker"].weight.shape == (2, 512)
    with torch.no_grad():
        z = module.wsc_embed(b)
    assert z.shape == (4, 512)
    assert torch.allclose(z, module.backbone.forward_features(b["image"]).mean(dim=(2, 3)))


def test_resnet_takes_sizes_sononet_refuses_and_checkpoints_load_with_weights_only():
    module = make_module(input_shape=[1, 40, 56])  # not multiples of 16: fine for a ResNet
    assert module(torch.randn(2, 1, 40, 56))["risk"].shape == (2, 3)
    with pytest.raises(ValueError, match="input_shape: image size \\[40, 56\\]: height 40 is not divisible by 16"):
        make_module(input_shape=[1, 40, 56], backbone={"name": "sononet16", "in_channels": 1, "pretrained": None})

    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    rebuilt = MultiHeadModule(**loaded["hyper_parameters"])
    rebuilt.load_state_dict(loaded["state_dict"])
    assert isinstance(rebuilt.backbone, ResNetBackbone)


@pytest.mark.parametrize(
    ("kwargs", "messages"),
    [
        ({"embedding": "adaptation_map"},
         ["embedding: adaptation_map needs a backbone with SonoNet's adaptation head (sononet16, sononet32, "
          "sononet64)", "'resnet18'"]),
        ({"backbone": {**RESNET18, "name": "resnet34"}},
         ["backbone.name: 'resnet34' is not one of sononet16, sononet32, sononet64, resnet18, resnet50"]),
        # every problem at once, each naming its key
        ({"input_shape": [1, 16, 64], "embedding": "adaptation_map", "head_mode": "x"},
         ["input_shape: image size [16, 64]: height 16 must be >= 32", "embedding: adaptation_map", "head_mode:"]),
    ],
)
def test_invalid_resnet_configurations_name_the_key(kwargs, messages):
    with pytest.raises(ValueError) as err:
        make_module(**kwargs)
    for message in messages:
        assert message in str(err.value)


def test_adaptation_map_with_resnet_is_a_config_error_naming_model_embedding(tiny_config):
    with pytest.raises(ConfigError) as err:
        train(tiny_config("model=resnet18", "model.embedding=adaptation_map"))
    assert "model.embedding: adaptation_map needs a backbone with SonoNet's adaptation head" in str(err.value)
    assert "resnet18" in str(err.value)


def test_resnet50_config_builds_a_2048_d_module(tmp_path):
    cfg = compose_train_config(tmp_path, ["model=resnet50"])
    module = hydra.utils.instantiate(cfg.model, _convert_="all", tasks=TASKS, primary="risk", input_shape=[1, 64, 64])
    assert isinstance(module.backbone, ResNetBackbone) and module.embedding_dim == 2048
    assert module.wsc_head_weights()["scanner"].weight.shape == (3, 2048)
    module.eval()
    with torch.no_grad():
        assert module.wsc_embed({"image": torch.randn(1, 1, 64, 64)}).shape == (1, 2048)


# --- torchvision-layout weights -------------------------------------------------------------------------------------


def test_pretrained_round_trip_sums_rgb_conv1_into_a_grayscale_backbone(tmp_path):
    source = torchvision_state("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    model = build_resnet("resnet18", in_channels=1)
    load_resnet_weights(model, path)
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    for key, value in state.items():
        if key != "conv1.weight":
            assert torch.equal(value, source[key]), key

    # a grayscale image gives the activation the RGB network gives that image replicated to RGB
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(source)
    reference_features = torch.nn.Sequential(*list(reference.children())[:-2]).eval()
    gray = torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        expected = reference_features(gray.expand(-1, 3, -1, -1))
        actual = model.eval().forward_features(gray)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()

    # through the module: backbone.pretrained is that file
    module = make_module(backbone={**RESNET18, "pretrained": str(path)})
    assert torch.equal(module.backbone.state_dict()["layer3.1.bn2.running_var"], source["layer3.1.bn2.running_var"])


def test_wider_conv1_gets_the_summed_filter_in_channel_0_and_zeros_elsewhere():
    source = torchvision_state("resnet18")
    model = build_resnet("resnet18", in_channels=8)
    load_resnet_weights(model, {"state_dict": source})
    weight = model.conv1.weight.detach()
    assert weight.shape == (64, 8, 7, 7)
    assert torch.equal(weight[:, :1], source["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.count_nonzero(weight[:, 1:]) == 0

    rgb = build_resnet("resnet18", in_channels=3)
    load_resnet_weights(rgb, source)  # a 3-channel model takes the file as is
    assert torch.equal(rgb.conv1.weight, source["conv1.weight"])


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: _without(s, "layer2.0.downsample.1.running_mean"),
         "missing keys: 'layer2.0.downsample.1.running_mean'"),
        (lambda s: {**s, "layer5.0.conv1.weight": torch.zeros(3)}, "unexpected keys: 'layer5.0.conv1.weight'"),
        (lambda s: {**s, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)},
         "shape mismatches: layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)"),
        (lambda s: {**s, "conv1.weight": torch.zeros(64, 2, 7, 7)},
         "conv1.weight: file (64, 2, 7, 7) vs model (64, 1, 7, 7)"),
    ],
)
def test_bad_files_name_the_key_and_load_nothing(tmp_path, edit, message):
    path = tmp_path / "bad.pth"
    torch.save(edit(torchvision_state("resnet18")), path)
    model = build_resnet("resnet18", in_channels=1)
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        load_resnet_weights(model, path)
    assert message in str(err.value) and "bad.pth" in str(err.value)
    assert_same(before, snapshot(model))


def test_resnet50_file_into_resnet18_lists_mismatches_and_module_reports_it(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_state("resnet50"), path)
    with pytest.raises(ValueError, match=r"unexpected keys: .*\(\d+ in total\)"):
        make_module(backbone={**RESNET18, "pretrained": str(path)})


@pytest.mark.parametrize("payload", [[torch.zeros(1)], "text", {}, {"conv1.weight": [1, 2]}])
def test_file_that_is_not_a_state_dict(tmp_path, payload):
    path = tmp_path / "notweights.pth"
    torch.save(payload, path)
    model = build_resnet("resnet18")
    before = snapshot(model)
    with pytest.raises(ValueError, match="notweights.pth"):
        load_resnet_weights(model, path)
    assert_same(before, snapshot(model))
    with pytest.raises(FileNotFoundError):
        load_resnet_weights(model, tmp_path / "absent.pth")


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wsca_train_with_resnet18_writes_a_512_d_summary(tmp_path):
    """The app's own train() on its composed config, in this process (the console script is tested in
    test_train_app; a subprocess would only add an interpreter start-up)."""
    run = tmp_path / "run"
    train(compose_train_config(run, [
        "model=resnet18", "data.num_train=64", "data.num_val=32", "data.image_size=[32,48]", "trainer.max_epochs=1",
        "callbacks.wsc.subset_size=64", "callbacks.wsc.num_permutations=5", "callbacks.wsc.save_plots=false",
        "trainer.enable_progress_bar=false"]))
    summary = json.loads((run / "wsc" / "wsc_summary.json").read_text())
    assert summary["embedding_dim"] == 512
    assert summary["primary"] == "risk" and "scanner" in summary["tasks"]
