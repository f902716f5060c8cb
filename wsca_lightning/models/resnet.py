"""torchvision ResNet-18 / ResNet-50 feature extractors (``model=resnet18`` / ``model=resnet50``).

The paper's fetal experiments use a ResNet-50 (embedding ``d = 2048``). :class:`ResNetBackbone` is torchvision's
``resnet18`` / ``resnet50`` built with ``weights=None`` (nothing is ever downloaded) with two changes:

* ``conv1`` takes ``in_channels`` inputs (1 for grayscale ultrasound), otherwise the same 7x7, stride 2, padding 3,
  bias-free conv, initialised like torchvision's convs (Kaiming normal, fan_out, ReLU);
* ``avgpool`` and ``fc`` are dropped: the :class:`~wsca_lightning.models.MultiHeadModule` pools the feature map and
  its linear heads replace ``fc``.

It offers the small protocol the module needs from a backbone: ``forward_features(x) -> (B, C, h, w)`` and
``out_channels`` (512 for ResNet-18, 2048 for ResNet-50). It has no adaptation head, so ``embedding:
adaptation_map`` is SonoNet-only. BatchNorm keeps torchvision's defaults (eps 1e-5, momentum 0.1).

State-dict keys are torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...), minus ``fc.*``,
so a saved ``torchvision.models.resnet50(weights=...).state_dict()`` loads with :func:`load_resnet_weights`.

Input size: five stride-2 stages give a ``ceil(H/32) x ceil(W/32)`` map, and the module averages it, so any
``H, W >= 32`` works (:func:`check_resnet_input_size`). Input normalisation is the datamodule's business;
torchvision's ImageNet weights were trained on RGB inputs normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torchvision
from torch import Tensor, nn

from wsca_lightning.models.sononet import input_size_problem, integer_sides
from wsca_lightning.models.weights import FirstConvAdapter, WeightSource, load_checked, read_state_dict
from wsca_lightning.problems import ConfigError

__all__ = [
    "FIRST_CONV",
    "RESNETS",
    "RESNET_DOWNSAMPLING",
    "RESNET_MIN_SIZE",
    "RESNET_OUT_CHANNELS",
    "ResNetBackbone",
    "build_resnet",
    "check_resnet_input_size",
    "load_resnet_weights",
]

#: torchvision constructors by backbone name (always called with ``weights=None``).
RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}
#: Channels C of the last stage (``layer4``), i.e. the pooled embedding dimension d.
RESNET_OUT_CHANNELS: dict[str, int] = {"resnet18": 512, "resnet50": 2048}
#: Total stride of the feature map: conv1, maxpool and layers 2-4 each halve the size (rounding up).
RESNET_DOWNSAMPLING: int = 32
#: Smallest height / width accepted: at least one full 32x32 receptive tile.
RESNET_MIN_SIZE: int = 32

#: torchvision's conv1 takes RGB; a model with other input channels gets the filters summed over RGB in its image
#: channel and zeros in the others (load_resnet_weights).
FIRST_CONV = FirstConvAdapter("conv1.weight", file_channels=3, other_channels="zero")
# torchvision's layout, in order; avgpool and fc are dropped.
_STEM_AND_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def check_resnet_input_size(height: int, width: int) -> None:
    """Raise :class:`~wsca_lightning.problems.ConfigError` (a ``ValueError``) unless ``height`` and ``width`` are
    integers >= 32 (ResNet downsamples 32x; any such size works because the feature map is average-pooled)."""
    sides = [f"{name} {value} must be >= {RESNET_MIN_SIZE} (ResNet downsamples {RESNET_DOWNSAMPLING}x)"
             for name, value in integer_sides(height, width) if value < RESNET_MIN_SIZE]
    if sides:
        raise ConfigError(input_size_problem(height, width, sides))


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/50 without ``avgpool`` / ``fc``, with a ``conv1`` for ``in_channels`` inputs.

    Args:
        name: ``resnet18`` or ``resnet50``.
        in_channels: input channels (1 for grayscale; 3 keeps torchvision's own ``conv1``).
    """

    def __init__(self, name: str = "resnet50", in_channels: int = 1) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet backbone {name!r}; valid names: {', '.join(RESNETS)}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
        self.name = name
        self.in_channels = in_channels
        net = RESNETS[name](weights=None)
        if in_channels != net.conv1.in_channels:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                  padding=old.padding, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        # Same attribute names as torchvision, so the state-dict keys are torchvision's minus fc.*
        for attr in _STEM_AND_STAGES:
            setattr(self, attr, getattr(net, attr))

    @property
    def out_channels(self) -> int:
        """Channels C of the ``layer4`` feature map (512 for ResNet-18, 2048 for ResNet-50)."""
        return RESNET_OUT_CHANNELS[self.name]

    def feature_map_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size ``(ceil(H/32), ceil(W/32))`` of the feature map for an input of ``height`` x ``width``."""
        check_resnet_input_size(height, width)
        return math.ceil(height / RESNET_DOWNSAMPLING), math.ceil(width / RESNET_DOWNSAMPLING)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> ``layer4`` features (B, C, ceil(H/32), ceil(W/32))."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)

    def extra_repr(self) -> str:
        return f"name={self.name}, in_channels={self.in_channels}"


def build_resnet(name: str, in_channels: int = 1) -> ResNetBackbone:
    """Build ``resnet18`` or ``resnet50`` (random init, nothing downloaded) for ``in_channels`` inputs."""
    return ResNetBackbone(name, in_channels)


def load_resnet_weights(model: ResNetBackbone, state_dict_or_path: WeightSource) -> None:
    """Load a torchvision-layout ResNet state dict into ``model``, in place.

    The source is a state dict or a path to one, e.g. ``torch.save(torchvision.models.resnet50(weights=...)
    .state_dict(), "resnet50.pth")``; a path is read with ``torch.load(path, map_location="cpu",
    weights_only=True)`` and a ``{"state_dict": {...}}`` wrapper is accepted. ``fc.*`` keys are ignored (the
    module's heads replace ``fc``). All other keys are strict: every model key must be in the file (only
    ``num_batches_tracked`` may be absent; the model then keeps its own) and every file key must be in the model,
    with equal shapes.

    First conv (:data:`FIRST_CONV`): when the file's ``conv1.weight`` has 3 (RGB) input channels and the model's does
    not, the file's filters are summed over RGB into one filter ``w.sum(dim=1)``, which gives a grayscale image the
    activation the pretrained network gives that image replicated to RGB. A 1-channel model gets the summed filter; a
    wider model (e.g. 8 channels: image + segmentation maps + spacing planes) gets it in input channel 0, the image, and
    zeros in the other channels, so at the start its output equals the pretrained network's on the image alone and
    training learns to use the extra channels. (Every other shape difference is an error.)

    Raises ``ValueError`` naming missing and unexpected keys and shape mismatches ("key: file shape vs model
    shape"), at most 10 of each kind with counts; everything is checked before anything is copied, so a failed
    load leaves ``model`` unchanged. A missing file raises ``FileNotFoundError``.
    """
    state, where = read_state_dict(state_dict_or_path)
    file_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_checked(
        model.state_dict(), file_state, FIRST_CONV,
        f"cannot load ResNet weights from {where} into {model.name} (in_channels={model.in_channels}; "
        "torchvision layout, fc.* ignored)",
    )
