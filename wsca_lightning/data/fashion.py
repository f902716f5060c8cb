"""Fashion-MNIST rendered through the built-in simulated ultrasound scanners: the paper's induced-bias study on real
image content.

Source: the 70,000 real 28 x 28 grayscale clothing images of Fashion-MNIST (Xiao et al. 2017) as four IDX files,
``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, directly in the root (as Debian's ``dataset-fashion-mnist``
package installs them in :data:`DEFAULT_ROOT`) or in ``<root>/FashionMNIST/raw/`` (as torchvision's
``FashionMNIST(root, download=True)`` writes them); see :data:`FASHION_LAYOUTS`. Nothing is downloaded and nothing
is ever written under the root.

Columns (:data:`FASHION_COLUMNS`) and how each one reaches the pixels:

``garment`` (categorical, primary label)
    The configured ``classes`` (default ``T-shirt/top, Trouser, Sneaker, Bag``; any of :data:`FASHION_CLASSES`),
    coded in the configured order. It plays the role of the fetal plane: the image content itself.
``scanner`` (categorical, ``scanner_A`` ...)
    The simulated devices of the synthetic cervix data (:data:`~wsca_lightning.data.synthetic.SCANNER_TABLE`):
    gain, gamma, PSF, speckle grain, depth attenuation, sector shape. Uniform, or in the training split a shortcut
    via ``shortcut_strength``: ``P(scanner = class mod S | class) = s + (1 - s) / S``.
``hospital`` (categorical, ``hospital_1`` ...)
    The burnt-in marker square in an image corner.
``pixel_spacing`` (continuous, mm per pixel at 224 x 288)
    Uniform in [0.24, 0.32]. The garment has a fixed physical size (:data:`OBJECT_SIZE_MM` for its 28 pixels), so
    its size in pixels is ``OBJECT_SIZE_MM / pixel_spacing`` reference pixels; the speckle grain (in mm) scales too.
``bmi`` (continuous, kg/m^2)
    ``normal(27, 5)`` clamped to [16, 45]. Not rendered: a negative control.

No cell is ever missing. Rendering, like a fetus in amniotic fluid: the garment's intensity ``g`` in [0, 1] becomes
tissue echogenicity ``0.2 + 1.1 g`` (the cervix's tissue range
:data:`~wsca_lightning.data.synthetic.TISSUE_ECHO_RANGE`), blended with opacity ``min(1, 4 g)`` over a nearly
anechoic round fluid sac (echogenicity 0.05, radius ``SAC_RADIUS * OBJECT_SIZE_MM`` = 24 mm) inside the same smooth
background tissue texture as the cervix (about 0.5). The garment is placed near the sector centre with a seeded pose
jitter (+-8 / +-10 reference px shift, +-15 degrees rotation) and then goes through the shared scanner chain
:func:`~wsca_lightning.data.synthetic.acquire` (speckle, PSF, attenuation, gain, gamma, sector, hospital marker).

Splits: ``train`` is drawn from ``train-*`` (6,000 images per class), ``val`` from ``t10k-*`` (1,000 per class):
the images of the configured classes in file order, shuffled by the split's seeded generator, first ``n`` taken.

Determinism: one seeded ``torch.Generator`` per split (:func:`~wsca_lightning.data.synthetic.split_generator`):
first the shuffle, then the metadata (:func:`sample_fashion_metadata`, fixed draw order, so ``shortcut_strength``
changes only the scanner column), then the images in chunks of
:func:`~wsca_lightning.data.synthetic.render_chunk_size` (per chunk: pose, speckle field, background texture). The
same ``(split, n, seed, options, files)`` gives bit-identical data on the same machine and torch build. With
``rows`` (the paper's balanced / biased subsets) only the chosen pool rows are rendered; ids name the image's index in
its IDX file (``train-012345``, ``val-001234``).

The model input is one channel (``in_channels`` must be 1): the normalised image.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsca_lightning.data.base import GeneratedImageDataset, split_problems
from wsca_lightning.data.generated import GeneratedDataModule
from wsca_lightning.data.scanner import (
    TISSUE_ECHO_RANGE,
    acquire,
    background_echo,
    hospital_names,
    pixel_grid,
    render_chunk_size,
    sample_acquisition,
    scanner_names,
    scanner_option_problems,
)
from wsca_lightning.data.synthetic import check_synthetic_options, split_generator
from wsca_lightning.data.transforms import normalize_image
from wsca_lightning.plain import is_int, to_plain
from wsca_lightning.problems import ConfigError, Problem, raise_if
from wsca_lightning.tasks import HeadConfig

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_METADATA",
    "DEFAULT_ROOT",
    "DEFAULT_TARGET",
    "FASHION_CLASSES",
    "FASHION_COLUMNS",
    "FASHION_FILES",
    "FASHION_LAYOUTS",
    "FashionUltrasoundDataModule",
    "FashionUltrasoundDataset",
    "OBJECT_SIZE_MM",
    "SAC_RADIUS",
    "check_fashion_options",
    "check_fashion_root",
    "fashion_column_classes",
    "fashion_folder",
    "read_idx",
    "render_garments",
    "sample_fashion_metadata",
]

#: The official class names, index = label in the IDX files.
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEFAULT_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Sneaker", "Bag")
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
#: (images file, labels file) per split; each may also be present uncompressed (without ``.gz``).
FASHION_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_SPLITS: tuple[str, ...] = tuple(FASHION_FILES)
#: Where the four files are looked for, in this order: folder relative to the root -> whose layout it is. A root that
#: already is the ``raw`` folder (or any folder of the four files) matches the first.
FASHION_LAYOUTS: dict[str, str] = {
    "": "Debian's dataset-fashion-mnist layout",
    os.path.join("FashionMNIST", "raw"): "torchvision's FashionMNIST(root, download=True) layout",
}
FASHION_COLUMNS: dict[str, str] = {
    "garment": "categorical",
    "scanner": "categorical",
    "hospital": "categorical",
    "pixel_spacing": "continuous",
    "bmi": "continuous",
}
DEFAULT_TARGET: dict[str, Any] = {"column": "garment", "type": "categorical"}
DEFAULT_METADATA: dict[str, dict[str, Any]] = {
    "scanner": {"column": "scanner", "type": "categorical"},
    "hospital": {"column": "hospital", "type": "categorical"},
    "spacing": {"column": "pixel_spacing", "type": "continuous", "bins": 4, "binning": "equal_width"},
    "bmi": {"column": "bmi", "type": "continuous", "bins": 4, "binning": "quantile"},
}

#: Physical size (mm) of the 28-pixel garment image: 1.43 mm per garment pixel; 125 .. 167 reference pixels.
OBJECT_SIZE_MM = 40.0
#: Radius of the anechoic fluid sac around the garment, as a fraction of :data:`OBJECT_SIZE_MM`.
SAC_RADIUS = 0.6
_FLUID_ECHO = 0.05  # echogenicity of fluid (the cervix's os): nearly black
_OBJECT_CENTER = (122.0, 144.0)  # (y, x) reference px: the middle of the fan
_CENTER_JITTER = (8.0, 10.0)  # +- reference px
_ANGLE_JITTER_DEG = 15.0
_OPACITY_GAIN = 4.0  # opacity = min(1, 4 g): faint garment pixels blend into the background

_INSTALL_HINT = (
    "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) or point data.root at a "
    "folder with the four Fashion-MNIST IDX files, or at the root given to torchvision's FashionMNIST(root, "
    "download=True)"
)

# --------------------------------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------------------------------

#: IDX type byte -> numpy big-endian dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file (gzip-compressed or plain, detected from its first bytes) into a tensor of its shape.

    The header is checked: two zero bytes, a known type byte, the number of dimensions, then the sizes; the payload
    must hold exactly ``prod(sizes)`` values. Any problem raises ``ValueError`` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000 + a type byte in "
            f"{', '.join(f'{k:02x}' for k in _IDX_DTYPES)} + the number of dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: the header declares shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header} bytes ({'truncated' if len(raw) - header < expected else 'trailing data'})"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _find(folder: str, name: str) -> str | None:
    """``folder/name``, or its uncompressed twin without ``.gz``; None if neither is a file."""
    for candidate in (name, name.removesuffix(".gz")):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _missing(folder: str) -> list[str]:
    """The names (without ``.gz``) of the four IDX files that ``folder`` lacks in either form."""
    return [name.removesuffix(".gz") for pair in FASHION_FILES.values() for name in pair
            if _find(folder, name) is None]


def fashion_folder(root: str) -> str | None:
    """The first folder of :data:`FASHION_LAYOUTS` under ``root`` holding all four IDX files (all four are read
    from that one folder, never mixed across layouts), or ``None``."""
    for relative in FASHION_LAYOUTS:
        folder = os.path.join(root, relative) if relative else root
        if not _missing(folder):
            return folder
    return None


def check_fashion_root(root: object) -> list[Problem]:
    """Problems with ``root`` (keyed ``root``): not a string, or no layout of :data:`FASHION_LAYOUTS` holds
    all four files; the line names every folder looked in and what it lacks, so a wrong root is found at once."""
    if not isinstance(root, str) or not root:
        return [Problem("root", f"must be the folder holding the Fashion-MNIST IDX files, got {root!r}")]
    if fashion_folder(root) is not None:
        return []
    looked = []
    for relative, layout in FASHION_LAYOUTS.items():
        folder = os.path.join(root, relative) if relative else root
        state = ("no such folder" if not os.path.isdir(folder)
                 else "lacks " + ", ".join(f"{name}[.gz]" for name in _missing(folder)))
        looked.append(f"{folder} ({layout}): {state}")
    return [Problem("root", f"{root} holds no complete set of the four Fashion-MNIST IDX files; looked in "
                            + "; ".join(looked) + f"; {_INSTALL_HINT}")]


def _split_file(root: str, split: str, kind: int) -> str:
    """The path of ``FASHION_FILES[split][kind]`` in the root's layout; ``ValueError`` as :func:`check_fashion_root`
    when there is none."""
    folder = fashion_folder(root)
    path = None if folder is None else _find(folder, FASHION_FILES[split][kind])
    if path is None:
        raise ConfigError(check_fashion_root(root))
    return path


def _read_labels(root: str, split: str) -> Tensor:
    path = _split_file(root, split, 1)
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != torch.uint8 or (labels.numel() and int(labels.max()) >= 10):
        raise ValueError(f"{path}: expected a 1-d uint8 IDX file of labels 0..9, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    return labels.to(torch.int64)


def _read_images(root: str, split: str, num_labels: int) -> Tensor:
    path = _split_file(root, split, 0)
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(f"{path}: expected a 3-d uint8 IDX file of images, got {images.dtype} {tuple(images.shape)}")
    if images.shape[0] != num_labels:
        raise ValueError(f"{path}: holds {images.shape[0]} images but its labels file holds {num_labels} labels")
    return images


# --------------------------------------------------------------------------------------------------------------------
# Options, metadata, rendering
# --------------------------------------------------------------------------------------------------------------------


def _class_problems(classes: object) -> list[Problem]:
    if (not isinstance(classes, Sequence) or isinstance(classes, str) or len(classes) < 2
            or not all(isinstance(c, str) for c in classes)):
        return [Problem("classes", f"must be a list of at least 2 Fashion-MNIST class names, got {classes!r}; "
                                   f"valid: {', '.join(FASHION_CLASSES)}")]
    errors = []
    unknown = [c for c in classes if c not in FASHION_CLASSES]
    if unknown:
        errors.append(Problem("classes", f"unknown class name(s) {unknown}; valid: {', '.join(FASHION_CLASSES)}"))
    if len(set(classes)) != len(classes):
        errors.append(Problem("classes", f"names must be distinct, got {list(classes)}"))
    return errors


def check_fashion_options(
    *,
    classes: object = DEFAULT_CLASSES,
    image_size: object = (64, 80),
    in_channels: object = 1,
    shortcut_strength: object = 0.0,
    num_scanners: object = 3,
    num_hospitals: object = 4,
    normalization: object = "sononet",
) -> list[Problem]:
    """Problems with the generation options (empty when all are valid)."""
    errors = _class_problems(classes)
    errors += check_synthetic_options(image_size=image_size, shortcut_strength=shortcut_strength,
                                      num_scanners=num_scanners, num_hospitals=num_hospitals,
                                      normalization=normalization)
    if not is_int(in_channels) or in_channels != 1:
        errors.append(Problem("in_channels", f"the Fashion-MNIST data has 1 channel (no segmentation maps), got "
                                             f"{in_channels!r}; use a 1-channel model (model=sononet16, sononet32, "
                                             "sononet64, resnet18 ...)"))
    return errors


def fashion_column_classes(column: str, classes: Sequence[str], num_scanners: int, num_hospitals: int) -> list[str]:
    """Class names, in code order, of a categorical column."""
    if column == "garment":
        return list(classes)
    if column == "scanner":
        return scanner_names(num_scanners)
    if column == "hospital":
        return hospital_names(num_hospitals)
    if column in FASHION_COLUMNS:
        raise ValueError(f"column {column!r} is continuous; it has no classes until binned")
    raise KeyError(f"unknown column {column!r}; available: {', '.join(FASHION_COLUMNS)}")


def sample_fashion_metadata(
    labels: Tensor,
    classes: Sequence[str],
    n: int,
    *,
    shortcut_strength: float,
    num_scanners: int,
    num_hospitals: int,
    generator: torch.Generator,
    split: str = "train",
) -> dict[str, Tensor]:
    """The pool of one split: ``n`` images of ``classes`` drawn without replacement from ``labels`` (all labels of
    the split's IDX file) and their metadata.

    Returns ``source_index`` (int64 row in the IDX file), ``garment`` (int64 code in ``classes`` order),
    ``scanner``, ``hospital`` (int64), ``pixel_spacing`` and ``bmi`` (float64). Draw order (fixed, independent of the
    option values): shuffle, shortcut coin, uniform scanner, hospital, spacing, bmi.
    """
    raise_if(_class_problems(classes) + check_synthetic_options(
        shortcut_strength=shortcut_strength, num_scanners=num_scanners, num_hospitals=num_hospitals))
    wanted = torch.tensor([FASHION_CLASSES.index(c) for c in classes], dtype=torch.int64)
    candidates = torch.nonzero(torch.isin(labels, wanted)).flatten()
    if not is_int(n) or not 1 <= n <= len(candidates):
        key = "num_train" if split == "train" else "num_val"
        raise ConfigError.at(key, f"must be an integer in [1, {len(candidates)}] (the {split} split holds "
                                  f"{len(candidates)} images of the {len(classes)} classes), got {n!r}")
    dev = generator.device
    source = candidates[torch.randperm(len(candidates), generator=generator, device=dev)[:n].cpu()]
    code_of = torch.full((10,), -1, dtype=torch.int64)
    code_of[wanted] = torch.arange(len(classes))
    garment = code_of[labels[source]].to(dev)
    return {"source_index": source.to(dev), "garment": garment,
            **sample_acquisition(garment, shortcut_strength=shortcut_strength, num_scanners=num_scanners,
                                 num_hospitals=num_hospitals, generator=generator)}


def render_garments(
    garments: Tensor,
    scanner: Tensor,
    hospital: Tensor,
    spacing: Tensor,
    image_size: Sequence[int],
    *,
    num_scanners: int,
    num_hospitals: int,
    generator: torch.Generator,
) -> Tensor:
    """Render ``garments`` ((n, h, w) uint8 or float in [0, 1]) as ultrasound scans at ``image_size``.

    Draws, in this order, the pose jitter (n, 3), the speckle field and the background texture from ``generator``;
    returns (n, 1, H, W) float32 in [0, 1] on the generator's device (see the module docstring).
    """
    raise_if(scanner_option_problems(image_size=image_size, num_scanners=num_scanners, num_hospitals=num_hospitals))
    h, w = int(image_size[0]), int(image_size[1])
    dev, f32 = generator.device, torch.float32
    n = garments.shape[0]
    g = garments.to(dev)
    g = (g.to(f32) / 255.0 if not g.is_floating_point() else g.to(f32)).unsqueeze(1)  # (n, 1, gh, gw)

    pose = torch.rand(n, 3, generator=generator, device=dev, dtype=f32) * 2 - 1
    speckle_field = torch.randn(n, 2, h, w, generator=generator, device=dev, dtype=f32)
    texture_field = torch.randn(n, 1, h, w, generator=generator, device=dev, dtype=f32)

    # Pixel positions in mm in the garment's frame (rotated by the pose angle), then in grid_sample's [-1, 1].
    yr, xr = pixel_grid((h, w), dev)
    sp = spacing.to(device=dev, dtype=f32).view(n, 1, 1)
    cy = (_OBJECT_CENTER[0] + _CENTER_JITTER[0] * pose[:, 0]).view(n, 1, 1)
    cx = (_OBJECT_CENTER[1] + _CENTER_JITTER[1] * pose[:, 1]).view(n, 1, 1)
    ang = torch.deg2rad(_ANGLE_JITTER_DEG * pose[:, 2]).view(n, 1, 1)
    px, py = (xr - cx) * sp, (yr - cy) * sp
    cos, sin = torch.cos(ang), torch.sin(ang)
    u = px * cos + py * sin
    v = -px * sin + py * cos
    grid = torch.stack([u, v], dim=-1) / (OBJECT_SIZE_MM / 2)  # (n, H, W, 2), x first
    g = F.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    lo, hi = TISSUE_ECHO_RANGE
    echo = background_echo(texture_field, spacing.to(dev), (h, w))
    sac_edge = SAC_RADIUS * OBJECT_SIZE_MM - torch.sqrt(u**2 + v**2)  # mm, > 0 inside the sac
    echo = echo + (_FLUID_ECHO - echo) * torch.sigmoid(sac_edge / 1.0)
    opacity = (_OPACITY_GAIN * g).clamp(0.0, 1.0)
    echo = echo + (lo + (hi - lo) * g - echo) * opacity
    return acquire(echo, scanner, hospital, spacing.to(dev), (h, w), num_scanners=num_scanners,
                   num_hospitals=num_hospitals, speckle_field=speckle_field)


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


class FashionUltrasoundDataset(GeneratedImageDataset):
    """One split of Fashion-MNIST through the simulated scanners, rendered once (in chunks) in ``__init__``.

    Attributes:
        columns: the pool rows' metadata (:func:`sample_fashion_metadata`) restricted to :attr:`rows`.
        images: (n, 1, H, W) float32, normalised.
        ids: ``"<split>-<index in the IDX file>"``.
        rows: the pool rows this dataset holds (``range(n)`` without ``rows``).

    Items: ``{"image": (1, H, W) float32, "targets": {task: int64 scalar}, "id": str, "index": int}``; until
    :meth:`set_targets` the targets are ``{"garment": code}``. The shortcut applies to ``train`` only.
    """

    def __init__(
        self,
        split: str,
        n: int,
        *,
        root: str = DEFAULT_ROOT,
        classes: Sequence[str] = DEFAULT_CLASSES,
        image_size: Sequence[int] = (64, 80),
        in_channels: int = 1,
        shortcut_strength: float = 0.0,
        num_scanners: int = 3,
        num_hospitals: int = 4,
        normalization: str = "sononet",
        seed: int = 0,
        rows: Sequence[int] | None = None,
        labels: Tensor | None = None,
    ) -> None:
        errors = check_fashion_options(classes=classes, image_size=image_size, in_channels=in_channels,
                                       shortcut_strength=shortcut_strength, num_scanners=num_scanners,
                                       num_hospitals=num_hospitals, normalization=normalization)
        errors += split_problems(split, FASHION_SPLITS, n, seed, rows)
        errors += check_fashion_root(root)
        raise_if(errors)

        self.split = split
        self.classes = list(classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = 1
        self.num_scanners = num_scanners
        self.num_hospitals = num_hospitals
        self.normalization = normalization
        self.shortcut_strength = float(shortcut_strength) if split == "train" else 0.0
        generator = split_generator(seed, split)
        if labels is None:
            labels = _read_labels(root, split)
        meta = sample_fashion_metadata(labels, self.classes, n, shortcut_strength=self.shortcut_strength,
                                       num_scanners=num_scanners, num_hospitals=num_hospitals, generator=generator,
                                       split=split)
        self.rows: list[int] = list(range(n)) if rows is None else [int(r) for r in rows]
        if rows is not None:
            index = torch.tensor(self.rows, dtype=torch.int64)
            meta = {k: v[index] for k, v in meta.items()}
        self.columns: dict[str, Tensor] = meta

        source = _read_images(root, split, len(labels))
        chosen = source[meta["source_index"].cpu()]
        del source
        images = []
        chunk = render_chunk_size(self.image_size)
        for start in range(0, len(self.rows), chunk):
            part = slice(start, start + chunk)
            img = render_garments(chosen[part], meta["scanner"][part], meta["hospital"][part],
                                  meta["pixel_spacing"][part], self.image_size, num_scanners=num_scanners,
                                  num_hospitals=num_hospitals, generator=generator)
            images.append(normalize_image(img, normalization))
        self.images: Tensor = torch.cat(images).cpu()
        self.ids: list[str] = [f"{split}-{int(i):06d}" for i in meta["source_index"]]
        self._targets: dict[str, Tensor] = {"garment": meta["garment"].cpu()}

    def column_classes(self, column: str) -> list[str]:
        """Class names, in code order, of a categorical column."""
        return fashion_column_classes(column, self.classes, self.num_scanners, self.num_hospitals)

    def input(self, i: int) -> Tensor:
        """The model input of sample ``i``: the normalised image, (1, H, W) float32."""
        return self.images[i]


# --------------------------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------------------------


class FashionUltrasoundDataModule(GeneratedDataModule):
    """Train/val splits of Fashion-MNIST rendered through the simulated scanners, with a primary ``garment`` head
    and metadata heads (the synthetic datamodule's head schema, over :data:`FASHION_COLUMNS`).

    Args:
        root: folder with the four IDX files, or torchvision's root with them in ``FashionMNIST/raw/`` (read only;
            :data:`FASHION_LAYOUTS`).
        classes: the garment classes of the primary task (official names, :data:`FASHION_CLASSES`).
        num_train: the training pool (images of ``classes`` from ``train-*``); num_val: from ``t10k-*``.
        image_size, shortcut_strength, num_scanners, num_hospitals, normalization, seed: as for the synthetic data.
        in_channels: must be 1.
        target: the primary head; its column must be ``garment`` (``type`` categorical, or binary with 2 classes;
            ``name`` optional). Default ``{column: garment, type: categorical}``.
        metadata: ``{head name: {"column", "type", ["bins", "binning"]}}`` over scanner, hospital, pixel_spacing,
            bmi; default :data:`DEFAULT_METADATA`; ``{}`` for the primary head only.
        subset: ``{mode: full|balanced|biased, by: <metadata head>, per_cell, major, minor, seed}`` exactly as for
            the synthetic datamodule: the cells are drawn from the pool, only the chosen rows are rendered, bin
            edges are fitted on the whole pool.
        batch_size, num_workers: DataLoader options.

    The configuration is validated in ``__init__`` (the root's files only looked for) and reported at once; the two
    small label files are read in :meth:`prepare_data` / :meth:`setup`, which check the split sizes before anything
    is rendered.
    """

    COLUMNS = FASHION_COLUMNS
    DEFAULT_TARGET = DEFAULT_TARGET
    DEFAULT_METADATA = DEFAULT_METADATA
    TITLE = "invalid fashion_mnist data config"


    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        classes: Sequence[str] = DEFAULT_CLASSES,
        num_train: int = 3000,
        num_val: int = 600,
        image_size: Sequence[int] = (64, 80),
        in_channels: int = 1,
        shortcut_strength: float = 0.0,
        num_scanners: int = 3,
        num_hospitals: int = 4,
        normalization: str = "sononet",
        target: Mapping | None = None,
        metadata: Mapping[str, Mapping] | None = None,
        subset: Mapping | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        image_size = to_plain(image_size, "image_size")
        classes = to_plain(classes, "classes")
        options: dict[str, Any] = {
            "classes": classes,
            "image_size": tuple(image_size) if isinstance(image_size, list) else image_size,
            "in_channels": in_channels,
            "shortcut_strength": shortcut_strength,
            "num_scanners": num_scanners,
            "num_hospitals": num_hospitals,
            "normalization": normalization,
        }
        self.root = root
        super().__init__(options, num_train=num_train, num_val=num_val, target=target, metadata=metadata,
                         subset=subset, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         leading_hparams={"root": root})
        self.classes: list[str] = list(classes)
        self.dataset_options["classes"] = self.classes
        #: the label files of both splits, read once by prepare_data or setup
        self._labels: dict[str, Tensor] = {}

    def _option_problems(self, options: Mapping[str, Any]) -> list[Problem]:
        return check_fashion_options(**options)

    def _class_counts(self, options: Mapping[str, Any], invalid: set[str]) -> dict[str, int | None]:
        return {
            "garment": None if "classes" in invalid else len(options["classes"]),
            "scanner": None if "num_scanners" in invalid else options["num_scanners"],
            "hospital": None if "num_hospitals" in invalid else options["num_hospitals"],
        }

    def _target_problems(self, target: HeadConfig) -> list[Problem]:
        if target.column == "garment":
            return []
        return [Problem("target.column", f"the primary task of the Fashion-MNIST data is 'garment', got "
                                         f"{target.column!r} (scanner, hospital, ... are metadata heads)")]

    def _source_problems(self, options: Mapping[str, Any]) -> list[Problem]:
        return check_fashion_root(self.root)

    def _classes(self, column: str) -> list[str]:
        return fashion_column_classes(column, self.classes, self.dataset_options["num_scanners"],
                                      self.dataset_options["num_hospitals"])

    def prepare_data(self) -> None:
        """Read the label files and check that each split holds enough images of the classes."""
        self._split_labels()

    def _split_labels(self) -> dict[str, Tensor]:
        """Both splits' labels (small files; read once), or a ConfigError naming the split that is too small."""
        if self._labels:
            return self._labels
        problems: list[Problem] = []
        labels: dict[str, Tensor] = {}
        wanted = torch.tensor([FASHION_CLASSES.index(c) for c in self.classes])
        for split, key, n in (("train", "num_train", self.num_train), ("val", "num_val", self.num_val)):
            try:
                labels[split] = _read_labels(self.root, split)
            except ValueError as err:
                problems.append(Problem("root", str(err)))
                continue
            available = int(torch.isin(labels[split], wanted).sum())
            if n > available:
                problems.append(Problem(key, f"the {split} split ({FASHION_FILES[split][1]}) holds {available} "
                                             f"images of the {len(self.classes)} classes, got {n}"))
        raise_if(problems, self.TITLE)
        self._labels = labels
        return labels

    def _sample_pool(self, split: str, n: int) -> dict[str, Tensor]:
        opts = self.dataset_options
        return sample_fashion_metadata(
            self._split_labels()[split], self.classes, n,
            shortcut_strength=opts["shortcut_strength"] if split == "train" else 0.0,
            num_scanners=opts["num_scanners"], num_hospitals=opts["num_hospitals"],
            generator=split_generator(self.seed, split), split=split)

    def _dataset(self, split: str, n: int, rows: list[int] | None) -> FashionUltrasoundDataset:
        return FashionUltrasoundDataset(split, n, **self.dataset_options, root=self.root, seed=self.seed, rows=rows,
                                        labels=self._split_labels()[split])
