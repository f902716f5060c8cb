"""Tests of the SonoNet family: architecture (parameter counts, key layout, shapes) and public-weight loading."""

from __future__ import annotations

import copy

import pytest
import torch

from wsca_lightning.models.sononet import (
    BACKBONES,
    DOWNSAMPLING,
    SONONET_WIDTHS,
    SonoNet,
    build_sononet,
    check_input_size,
    load_sononet_weights,
    sa_sononet32,
    sononet16,
    sononet32,
    sononet64,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def public_state_dict(model: SonoNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the public-file layout: no num_batches_tracked, values unlike a fresh model's."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        noise = torch.rand(value.shape, generator=gen)
        # running_var must stay positive; everything else just needs to differ from the init.
        out[key] = (value + 0.5 + noise).clone() if key.endswith("running_var") else (value + noise - 0.5).clone()
    return out


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- architecture ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"), [(sononet16, 930_796), (sononet32, 3_716_540), (sononet64, 14_852_956)]
)
def test_parameter_counts_match_sononet(factory, expected):
    assert n_params(factory(in_channels=1, adaptation_channels=14)) == expected


def test_sa_sononet_parameter_count():
    model = sa_sononet32()
    assert (model.width, model.in_channels, model.adaptation_channels) == (32, 8, 1)
    assert n_params(model) == 3_716_866


def test_state_dict_layout_matches_public_files():
    state = sononet16(adaptation_channels=14).state_dict()
    public = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(public) == 75
    assert public["features.0.0.0.weight"].shape == (16, 1, 3, 3)
    for key in ("features.0.0.1.weight", "features.0.0.1.bias", "features.0.0.1.running_mean", "features.0.0.1.running_var"):
        assert key in public
    # last conv of block 5 (3 units, no pool)
    assert public["features.4.2.0.weight"].shape == (128, 128, 3, 3)
    assert public["adaption.0.weight"].shape == (64, 128, 1, 1)
    assert public["adaption.3.weight"].shape == (14, 64, 1, 1)
    assert {"adaption.1.running_var", "adaption.4.running_var"} <= public.keys()
    assert sum(k.startswith("adaption.") for k in public) == 10


def test_blocks_end_with_maxpool_and_bn_eps():
    model = sononet32()
    assert len(model.features) == 5
    for b in range(4):
        assert isinstance(model.features[b][-1], torch.nn.MaxPool2d)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.features[4])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-4 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert model.adaption is None and model.out_channels == 256


def test_registry_and_builders():
    assert SONONET_WIDTHS == {"sononet16": 16, "sononet32": 32, "sononet64": 64}
    assert set(BACKBONES) == set(SONONET_WIDTHS) and DOWNSAMPLING == 16
    model = build_sononet("sononet16", in_channels=3, adaptation_channels=2)
    assert (model.width, model.in_channels, model.adaptation_channels) == (16, 3, 2)
    with pytest.raises(ValueError, match="sononet16"):
        build_sononet("sononet128")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"width": 24}, "16, 32, 64"), ({"in_channels": 0}, "in_channels"), ({"adaptation_channels": 0}, "adaptation")],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SonoNet(**kwargs)


# --- shapes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3, 8])
def test_feature_and_adaptation_shapes(in_channels):
    torch.manual_seed(0)
    model = sononet16(in_channels=in_channels, adaptation_channels=3)
    x = torch.randn(2, in_channels, 64, 80)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 4, 5)
    assert model.forward_adaptation(x).shape == (2, 3, 4, 5)
    assert model(x).shape == (2, 3, 4, 5)
    assert model.feature_map_size(64, 80) == (4, 5)


def test_forward_without_head_returns_features():
    model = sononet16()
    x = torch.randn(1, 1, 32, 32)
    assert model(x).shape == (1, 128, 2, 2)
    with pytest.raises(RuntimeError, match="adaptation head"):
        model.forward_adaptation(x)


def test_paper_input_size_gives_14x18():
    model = sononet16(adaptation_channels=1).eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 1, 224, 288))
    assert out.shape == (1, 128, 14, 18)
    assert model.feature_map_size(224, 288) == (14, 18)


def test_wrong_channel_count_is_reported():
    model = sononet16(in_channels=8)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\).*\(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    ("size", "match"),
    [((60, 80), r"\[60, 80\].*height 60.*64 or 48"), ((64, 90), r"width 90.*96 or 80"), ((0, 64), "height 0")],
)
def test_check_input_size_names_the_size(size, match):
    with pytest.raises(ValueError, match=match):
        check_input_size(*size)
    with pytest.raises(ValueError, match=match):
        sononet16().feature_map_size(*size)


def test_check_input_size_accepts_multiples_of_16():
    check_input_size(224, 288)
    check_input_size(16, 16)


# --- weight loading -------------------------------------------------------------------------------------------------


def test_load_public_layout_round_trip():
    torch.manual_seed(0)
    source = public_state_dict(sononet16(adaptation_channels=14))
    model = sononet16(adaptation_channels=14)
    nbt_before = model.features[0][0][1].num_batches_tracked.clone()
    load_sononet_weights(model, source)
    loaded = model.state_dict()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key
    # absent from the file: the model keeps its own
    assert torch.equal(model.features[0][0][1].num_batches_tracked, nbt_before)


def test_wrapped_state_dict_is_accepted():
    source = public_state_dict(sononet16())
    model = sononet16()
    load_sononet_weights(model, {"state_dict": source})
    assert torch.equal(model.state_dict()["features.4.2.0.weight"], source["features.4.2.0.weight"])


def test_missing_key_is_named_and_nothing_loads():
    source = public_state_dict(sononet16(adaptation_channels=14))
    del source["features.2.1.1.running_mean"]
    model = sononet16(adaptation_channels=14)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"missing keys: 'features\.2\.1\.1\.running_mean'"):
        load_sononet_weights(model, source)
    assert_same(before, snapshot(model))


def test_unexpected_key_is_named():
    source = public_state_dict(sononet16(adaptation_channels=14))
    source["features.5.0.0.weight"] = torch.zeros(3)
    source["classifier.weight"] = torch.zeros(3)
    model = sononet16(adaptation_channels=14)
    before = snapshot(model)
    with pytest.raises(ValueError, match="unexpected keys") as info:
        load_sononet_weights(model, source)
    assert "features.5.0.0.weight" in str(info.value) and "classifier.weight" in str(info.value)
    assert_same(before, snapshot(model))


def test_shape_mismatch_names_key_and_both_shapes():
    source = public_state_dict(sononet32())  # width 32 file into a width 16 model
    model = sononet16()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        load_sononet_weights(model, source)
    message = str(info.value)
    assert "features.0.0.0.weight: file (32, 1, 3, 3) vs model (16, 1, 3, 3)" in message
    assert_same(before, snapshot(model))


def test_adaptation_k_mismatch_is_an_error_unless_excluded():
    source = public_state_dict(sononet16(adaptation_channels=14))
    model = sononet16(adaptation_channels=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"adaption\.3\.weight: file \(14, 64, 1, 1\) vs model \(1, 64, 1, 1\)"):
        load_sononet_weights(model, source)
    assert_same(before, snapshot(model))

    load_sononet_weights(model, source, include_adaptation=False)
    after = model.state_dict()
    for key, value in source.items():
        if key.startswith("features."):
            assert torch.equal(after[key], value), key
    for key, value in before.items():
        if key.startswith("adaption."):
            assert torch.equal(after[key], value), key


def test_include_adaptation_true_requires_head_in_both():
    source = public_state_dict(sononet16(adaptation_channels=14))
    with pytest.raises(ValueError, match="no adaptation head"):
        load_sononet_weights(sononet16(), source, include_adaptation=True)
    features_only = {k: v for k, v in source.items() if k.startswith("features.")}
    with pytest.raises(ValueError, match="adaption"):
        load_sononet_weights(sononet16(adaptation_channels=14), features_only, include_adaptation=True)


def test_file_head_ignored_when_model_has_none():
    source = public_state_dict(sononet16(adaptation_channels=14))
    model = sononet16()
    load_sononet_weights(model, source)
    assert torch.equal(model.state_dict()["features.3.2.0.weight"], source["features.3.2.0.weight"])


def test_first_conv_widening_copies_into_image_channel():
    torch.manual_seed(1)
    source = public_state_dict(sononet32(adaptation_channels=14))
    model = sa_sononet32()
    before = snapshot(model)
    load_sononet_weights(model, source, include_adaptation=False)
    weight = model.features[0][0][0].weight.detach()
    assert weight.shape == (32, 8, 3, 3)
    assert torch.equal(weight[:, :1], source["features.0.0.0.weight"])
    assert torch.equal(weight[:, 1:], before["features.0.0.0.weight"][:, 1:])
    # the rest of the features, BN of the first unit included, came from the file
    assert torch.equal(model.state_dict()["features.0.0.1.running_var"], source["features.0.0.1.running_var"])


def test_load_from_path(tmp_path):
    source = public_state_dict(sononet16(adaptation_channels=14))
    path = tmp_path / "SonoNet16.pth"
    torch.save(source, path)
    model = sononet16(adaptation_channels=14)
    load_sononet_weights(model, path)
    load_sononet_weights(model, str(path))
    assert torch.equal(model.state_dict()["adaption.4.running_mean"], source["adaption.4.running_mean"])


def test_load_uses_weights_only(tmp_path, monkeypatch):
    source = public_state_dict(sononet16())
    path = tmp_path / "w.pth"
    torch.save(source, path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_sononet_weights(sononet16(), path)
    assert seen.get("weights_only") is True and seen.get("map_location") == "cpu"


class NotAllowed:
    """Pickling this needs code execution on load, which weights_only refuses."""


@pytest.mark.parametrize(
    "payload", [[torch.zeros(1)], "text", {"features.0.0.0.weight": [1, 2]}, NotAllowed(), {}]
)
def test_file_that_is_not_a_state_dict(tmp_path, payload):
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    model = sononet16()
    before = snapshot(model)
    with pytest.raises(ValueError, match="bad.pth"):
        load_sononet_weights(model, path)
    assert_same(before, snapshot(model))


def test_text_file_is_not_a_state_dict(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt"):
        load_sononet_weights(sononet16(), path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sononet_weights(sononet16(), tmp_path / "absent.pth")


def test_load_does_not_alias_source():
    source = public_state_dict(sononet16())
    keep = copy.deepcopy(source)
    model = sononet16()
    load_sononet_weights(model, source)
    with torch.no_grad():
        model.features[0][0][0].weight.zero_()
    assert torch.equal(source["features.0.0.0.weight"], keep["features.0.0.0.weight"])
