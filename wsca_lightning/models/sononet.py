"""SonoNet backbones (SonoNet-16/32/64), the SA-SonoNet variant, and loading of the public pretrained weights.

SonoNet: Baumgartner et al., "SonoNet: Real-Time Detection and Localisation of Fetal Standard Scan Planes in
Freehand Ultrasound", IEEE TMI 2017. SA-SonoNet: Pegios et al., "Leveraging Shape and Spatial Information for
Spontaneous Preterm Birth Prediction", ASMUS 2023: SonoNet-32 whose first conv takes 8 channels (1 grayscale
image + 5 segmentation probability maps + 2 constant pixel-spacing planes), input 224 x 288.

Layout (kept identical to the public ``SonoNet16.pth`` / ``SonoNet32.pth`` / ``SonoNet64.pth`` state dicts so they
load without renaming): ``features[b]`` is block ``b``, an ``nn.Sequential`` of units ``nn.Sequential(conv, bn,
relu)`` followed, for blocks 0..3, by ``nn.MaxPool2d(2)``; keys are ``features.<block>.<unit>.<op>.*``. The optional
1x1 adaptation head is ``adaption`` (the public files' spelling): conv C->C/2, BN, ReLU, conv C/2->K, BN. Global
average pooling of the adaptation map into K logits is left to the head that uses it, because the WSC analysis
embeds the un-pooled K x h x w map.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from torch import Tensor, nn

from wsca_lightning.models.weights import FirstConvAdapter, WeightSource, load_checked, read_state_dict
from wsca_lightning.problems import ConfigError, Problem

__all__ = [
    "BACKBONES",
    "DOWNSAMPLING",
    "FIRST_CONV",
    "SONONET_WIDTHS",
    "SonoNet",
    "build_sononet",
    "check_input_size",
    "input_size_problem",
    "integer_sides",
    "load_sononet_weights",
    "sa_sononet32",
    "sononet16",
    "sononet32",
    "sononet64",
]

SONONET_WIDTHS: dict[str, int] = {"sononet16": 16, "sononet32": 32, "sononet64": 64}
#: Total spatial downsampling of the feature map: four 2x max-pools (after blocks 1-4).
DOWNSAMPLING: int = 16

# (number of convs, width multiplier relative to the first block) for the five blocks.
_BLOCKS: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
# SonoNet's BatchNorm eps; the public weights' running statistics were estimated with it.
_BN_EPS = 1e-4
#: The public files' first conv is grayscale (1 input channel); a wider model (SA-SonoNet's 8) gets the filters in
#: its image channel and keeps its own initialisation in the others (load_sononet_weights).
FIRST_CONV = FirstConvAdapter("features.0.0.0.weight", file_channels=1, other_channels="keep")


def integer_sides(height: int, width: int) -> list[tuple[str, int]]:
    """``[("height", h), ("width", w)]`` as integers; ``TypeError`` naming the image size when a side is not one."""
    sides = []
    for name, value in (("height", height), ("width", width)):
        try:
            sides.append((name, operator.index(value)))
        except TypeError:
            raise TypeError(f"image size {[height, width]}: {name} must be an integer, got "
                            f"{type(value).__name__}") from None
    return sides


def check_input_size(height: int, width: int) -> None:
    """Raise :class:`~wsca_lightning.problems.ConfigError` (a ``ValueError``) unless both ``height`` and ``width``
    are positive multiples of 16.

    SonoNet has four 2x max-pools; any other size would be silently floored, and the feature map would no longer
    line up with the image. The message names the offending size and suggests the nearest valid sizes; it is one
    problem without a key, which the caller keys (the module reports it at ``input_shape``).
    """
    sides = []
    for name, value in integer_sides(height, width):
        if value <= 0:
            sides.append(f"{name} {value} must be a positive multiple of {DOWNSAMPLING}")
        elif value % DOWNSAMPLING:
            lower = value // DOWNSAMPLING * DOWNSAMPLING
            upper = lower + DOWNSAMPLING
            candidates = sorted((c for c in (upper, lower) if c > 0), key=lambda c: (abs(c - value), -c))
            sides.append(
                f"{name} {value} is not divisible by {DOWNSAMPLING} (SonoNet has four 2x max-pools); "
                f"use {' or '.join(str(c) for c in candidates)}"
            )
    if sides:
        raise ConfigError(input_size_problem(height, width, sides))


def input_size_problem(height: int, width: int, sides: list[str]) -> Problem:
    """One problem for an image size that does not fit a backbone: ``image size [h, w]: <side>; <side>``."""
    return Problem("", f"image size {[height, width]}: " + "; ".join(sides))


def _conv_unit(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels, eps=_BN_EPS),
        nn.ReLU(inplace=True),
    )


class SonoNet(nn.Module):
    """SonoNet feature extractor with an optional 1x1 adaptation head.

    Args:
        width: channels of the first block: 16, 32 or 64 (SonoNet-16/32/64); block 5 has ``8 * width`` channels.
        in_channels: input channels (1 for grayscale ultrasound, 8 for SA-SonoNet).
        adaptation_channels: K of the adaptation head (conv C->C/2, BN, ReLU, conv C/2->K, BN); ``None`` builds no
            head and ``forward`` returns the block-5 features.
    """

    def __init__(self, width: int = 32, in_channels: int = 1, adaptation_channels: int | None = None) -> None:
        super().__init__()
        valid = sorted(SONONET_WIDTHS.values())
        if isinstance(width, bool) or width not in valid:
            raise ValueError(f"SonoNet width must be one of {valid}, got {width!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
        if adaptation_channels is not None and (
            isinstance(adaptation_channels, bool) or not isinstance(adaptation_channels, int) or adaptation_channels < 1
        ):
            raise ValueError(f"adaptation_channels must be None or an integer >= 1, got {adaptation_channels!r}")
        self.width = width
        self.in_channels = in_channels
        self.adaptation_channels = adaptation_channels

        blocks = []
        channels = in_channels
        for index, (num_convs, multiplier) in enumerate(_BLOCKS):
            out = width * multiplier
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers.append(_conv_unit(channels, out, 3))
                channels = out
            if index < len(_BLOCKS) - 1:
                # The pool is the last element of the block, as in the public weights (it has no parameters, so its
                # index does not appear in the state dict, but the unit indices before it must match).
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)

        self.adaption: nn.Sequential | None = None
        if adaptation_channels is not None:
            c = self.out_channels
            self.adaption = nn.Sequential(
                nn.Conv2d(c, c // 2, 1, bias=False),
                nn.BatchNorm2d(c // 2, eps=_BN_EPS),
                nn.ReLU(inplace=True),
                nn.Conv2d(c // 2, adaptation_channels, 1, bias=False),
                nn.BatchNorm2d(adaptation_channels, eps=_BN_EPS),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming normal (fan_out, ReLU) for every conv, BN weight 1 / bias 0: the usual init for bias-free
        # conv-BN-ReLU stacks trained from scratch; pretrained weights overwrite it via load_sononet_weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def out_channels(self) -> int:
        """Channels C of the block-5 feature map (``8 * width``)."""
        return self.width * _BLOCKS[-1][1]

    def feature_map_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size (H/16, W/16) of the feature / adaptation map for an input of ``height`` x ``width``."""
        check_input_size(height, width)
        return height // DOWNSAMPLING, width // DOWNSAMPLING

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> block-5 features (B, C, H/16, W/16)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SonoNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.features(x)

    def forward_adaptation(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> adaptation map (B, K, H/16, W/16)."""
        if self.adaption is None:
            raise RuntimeError("this SonoNet was built without an adaptation head (adaptation_channels=None)")
        return self.adaption(self.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Adaptation map if the model has the head, else block-5 features."""
        if self.adaption is None:
            return self.forward_features(x)
        return self.forward_adaptation(x)

    def extra_repr(self) -> str:
        return f"width={self.width}, in_channels={self.in_channels}, adaptation_channels={self.adaptation_channels}"


def sononet16(in_channels: int = 1, adaptation_channels: int | None = None) -> SonoNet:
    """SonoNet-16 (block widths 16-32-64-128-128)."""
    return SonoNet(16, in_channels, adaptation_channels)


def sononet32(in_channels: int = 1, adaptation_channels: int | None = None) -> SonoNet:
    """SonoNet-32 (block widths 32-64-128-256-256)."""
    return SonoNet(32, in_channels, adaptation_channels)


def sononet64(in_channels: int = 1, adaptation_channels: int | None = None) -> SonoNet:
    """SonoNet-64 (block widths 64-128-256-512-512)."""
    return SonoNet(64, in_channels, adaptation_channels)


def sa_sononet32(adaptation_channels: int | None = 1) -> SonoNet:
    """SA-SonoNet (Pegios et al. 2023): SonoNet-32 with 8 input channels (image, 5 segmentation maps, 2 spacing
    planes) and, by default, a K=1 adaptation head."""
    return SonoNet(32, in_channels=8, adaptation_channels=adaptation_channels)


BACKBONES: dict[str, Callable[..., SonoNet]] = {"sononet16": sononet16, "sononet32": sononet32, "sononet64": sononet64}


def build_sononet(name: str, in_channels: int = 1, adaptation_channels: int | None = None) -> SonoNet:
    """Build a SonoNet variant by name (``sononet16``, ``sononet32`` or ``sononet64``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown SonoNet backbone {name!r}; valid names: {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, adaptation_channels=adaptation_channels)


def load_sononet_weights(
    model: SonoNet,
    state_dict_or_path: WeightSource,
    *,
    include_adaptation: bool | None = None,
) -> None:
    """Load SonoNet weights in the public layout (``features.*`` and ``adaption.*``) into ``model``, in place.

    A path is read with ``torch.load(path, map_location="cpu", weights_only=True)``; a ``{"state_dict": {...}}``
    wrapper is accepted. The check is strict on the ``features.*`` subset: every model key must be in the file and
    every ``features.*`` file key must be in the model, with equal shapes (``num_batches_tracked`` may be absent
    from the file, as in the public files; the model then keeps its own). Keys outside ``features.*`` and
    ``adaption.*`` are unexpected.

    ``include_adaptation``: ``None`` loads ``adaption.*`` iff the model has an adaptation head (the file must then
    have it, with the same K); ``True`` requires the model to have a head and the file to have ``adaption.*``
    keys; ``False`` ignores the file's ``adaption.*`` keys and leaves the model's head (if any) untouched, which is
    how to start a K=1 head from a K=14 file.

    First-conv widening (:data:`FIRST_CONV`): when the file's first conv ``features.0.0.0.weight`` has 1 input channel
    and the model's has more (SA-SonoNet's 8), the pretrained filters are copied into input channel 0, the grayscale
    image, and the other input channels keep their initialisation. We do not rescale or replicate the filters into the
    extra channels: channel 0 then responds to the image exactly as the pretrained network did, and the segmentation /
    spacing channels start as freshly initialised inputs that training learns to use.

    Raises ``ValueError`` (naming the keys, at most 10 of each kind, with counts) for missing or unexpected keys and
    for shape mismatches ("key: file shape vs model shape"); everything is validated before anything is copied, so
    a failed load leaves ``model`` unchanged.
    """
    state, where = read_state_dict(state_dict_or_path)
    has_head = model.adaption is not None
    file_has_head = any(k.startswith("adaption.") for k in state)
    if include_adaptation is None:
        include_adaptation = has_head
    elif include_adaptation:
        if not has_head:
            raise ValueError("include_adaptation=True but the model has no adaptation head (adaptation_channels=None)")
        if not file_has_head:
            raise ValueError(f"include_adaptation=True but {where} has no 'adaption.*' keys")

    def wanted(key: str) -> bool:
        return key.startswith("features.") or (include_adaptation and key.startswith("adaption."))

    model_state = {k: v for k, v in model.state_dict().items() if wanted(k)}
    file_state = {k: v for k, v in state.items() if not (k.startswith("adaption.") and not include_adaptation)}
    load_checked(
        model_state, file_state, FIRST_CONV,
        f"cannot load SonoNet weights from {where} into SonoNet-{model.width} "
        f"(in_channels={model.in_channels}, adaptation_channels={model.adaptation_channels}, "
        f"include_adaptation={include_adaptation})",
    )
