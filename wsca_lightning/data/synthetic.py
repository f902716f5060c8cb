"""Built-in synthetic cervix ultrasound data: generated deterministically, no download.

Each sample imitates a transvaginal cervix scan: a grayscale fan-shaped (sector) field of view with speckle, black
outside the sector, and a cervix in the middle: a bright line (the cervical canal) whose physical length is the
cervical length, surrounded by darker stroma (anterior lip above, posterior lip below the canal) with a dark internal
os at the canal's right end and a dark external os at its left end.

Columns (``SYNTHETIC_COLUMNS``) and how each one reaches the pixels:

``risk`` (categorical, primary label)
    ``short`` / ``intermediate`` / ``normal``, drawn uniformly; never missing.
``cervical_length`` (continuous, mm)
    Uniform inside the class range: short [15, 25), intermediate [25, 35), normal [35, 50]. Rendered as the canal
    length, so in pixels it is ``cervical_length / pixel_spacing`` at the reference resolution 224 x 288 (and
    proportionally less at smaller sizes). The stroma (lips) grows with it.
``scanner`` (categorical, ``scanner_A`` ...)
    Each device has a fixed appearance (:data:`SCANNER_TABLE`): gain, gamma, point-spread-function width, speckle
    grain size, depth attenuation, sector opening angle and sector depth. In the training split it can be made a
    shortcut for ``risk`` (``shortcut_strength``): ``P(scanner = risk mod S | risk) = s + (1 - s) / S``.
``hospital`` (categorical, ``hospital_1`` ...)
    A small bright burnt-in square at a site-specific position in an image corner, outside the sector.
``pixel_spacing`` (continuous, mm per pixel at 224 x 288)
    Uniform in [0.24, 0.32] (+-14 % around 0.28). It sets the physical scale: every structure and the speckle grain
    (both defined in mm) shrink in pixels as the spacing grows. The range is chosen so the longest cervix (50 mm)
    still fits in the sector; the band length in pixels mostly separates the risk classes.
``bmi`` (continuous, kg/m^2)
    ``normal(27, 5)`` clamped to [16, 45]. Not rendered at all: an unencodable variable, a negative control.
``pixel_spacing_x``, ``pixel_spacing_y`` (continuous, mm per pixel at the *rendered* size)
    ``pixel_spacing * 288 / W`` and ``pixel_spacing * 224 / H``: what a DICOM header of the rendered image says (the
    paper lists both). Pixels are square at the reference size, so both carry the same information as
    ``pixel_spacing``; they are blank when it is.
``gestational_age`` (continuous, weeks at the scan)
    Uniform in [18, 24), the mid-trimester cervical-length screening window. Not rendered.
``preterm`` (binary: ``term`` / ``preterm``, the paper's sPTB outcome)
    ``P(preterm) = sigmoid((25 - cervical_length) / 3.5)``: a short cervix predicts spontaneous preterm birth
    (about 0.8 for ``short``, 0.2 for ``intermediate``, 0.02 for ``normal``; prevalence about a third, an
    enriched high-risk cohort). It reaches the image only through the cervical length. Never missing.
``birth_weight`` (continuous, g)
    From the delivery week (preterm: uniform [28, 37), term: [37, 41.5)):
    ``3400 - 190 * (39.5 - week) + normal(0, 350)`` clamped to [400, 5000]. Not rendered; related to the image only
    through ``preterm``.
``referral`` (binary: ``routine`` / ``referred``)
    Whether the scan was a referral: drawn from the ``risk`` class alone, ``P(referred | risk) =`` 0.75 (short),
    0.5 (intermediate), 0.25 (normal). Not rendered, and unrelated to the image beyond the risk class: a column
    associated with the label in the population that no head can *use* (the calibration suite's H0b). Never missing.

Missing metadata: with ``missing_fraction`` every metadata cell except ``risk`` is blanked independently (code -1
for categorical columns, NaN for continuous ones). The renderer always uses the *true* values:
:func:`sample_metadata` returns the reported columns plus ``true_<column>`` for each of them.

SA-SonoNet input (``in_channels == 8``): channel 0 the normalised image; channels 1-5 soft probability maps
(:data:`SEGMENTATION_CHANNELS`: canal, anterior lip, posterior lip, internal os, external os) in [0, 1], zero
outside the sector; channels 6 and 7 constant planes holding the pixel spacing x and y in mm per pixel *at the
rendered size* (``spacing * 288 / W`` and ``spacing * 224 / H``). The spacing planes use the true spacing (like a
DICOM header) even when the ``pixel_spacing`` label is reported missing.

Determinism: everything is drawn from one seeded ``torch.Generator`` per split (stream ``3 * seed + split_index``),
first all metadata, then the images in chunks of :func:`render_chunk_size`; the same ``(split, n, seed, options)``
gives bit-identical data on the same machine and torch build. Changing ``shortcut_strength`` changes only the
scanner column (every other column and random draw stays the same). The clinical outcome columns
(``gestational_age``, ``preterm``, ``birth_weight``) come from a second generator seeded with the first one's seed
plus :data:`CLINICAL_STREAM_OFFSET`, so adding them left every other column and every image unchanged.

Rendering has two parts: the *content* (the cervix geometry -> a tissue echogenicity map and the segmentation maps)
and the *acquisition*, :func:`acquire`: the simulated scanner chain (speckle with the scanner's grain in mm, PSF blur,
depth attenuation, gain, gamma, the sector mask) and the hospital's burnt-in marker, applied to any echogenicity map.
The chain lives in :mod:`wsca_lightning.data.scanner`; every dataset rendered through these scanners (also
:mod:`wsca_lightning.data.fashion`) uses it.

Subsets (``rows``): the dataset draws the metadata of all ``n`` rows (the pool) and renders only the chosen rows,
so the paper's balanced / biased training sets (:func:`~wsca_lightning.data.splits.select_subset`) cost only the
images they use. Ids keep the pool row number.
"""


from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from wsca_lightning.data.base import GeneratedImageDataset, split_problems
from wsca_lightning.data.scanner import (
    BMI_RANGE,
    PIXEL_SPACING_RANGE,
    REFERENCE_SIZE,
    TISSUE_ECHO_RANGE,
    acquire,
    background_echo,
    hospital_names,
    mm_per_pixel,
    pixel_grid,
    render_chunk_size,
    scanner_names,
    sample_acquisition,
    scanner_option_problems,
    sector_mask,
)
from wsca_lightning.data.transforms import NORMALIZATIONS, normalize_image
from wsca_lightning.plain import is_int, is_number
from wsca_lightning.problems import Problem, raise_if

__all__ = [
    "CLINICAL_STREAM_OFFSET",
    "CONTINUOUS_RANGES",
    "IN_CHANNELS",
    "PRETERM_CLASSES",
    "REFERRAL_CLASSES",
    "REFERRAL_PROBABILITY",
    "RISK_CLASSES",
    "RISK_LENGTH_RANGES",
    "SEGMENTATION_CHANNELS",
    "SPLITS",
    "SYNTHETIC_COLUMNS",
    "SyntheticUltrasoundDataset",
    "check_synthetic_options",
    "column_classes",
    "render_ultrasound",
    "sample_metadata",
    "split_generator",
]

#: Every column of the built-in dataset and its kind.
SYNTHETIC_COLUMNS: dict[str, str] = {
    "risk": "categorical",
    "scanner": "categorical",
    "hospital": "categorical",
    "cervical_length": "continuous",
    "pixel_spacing": "continuous",
    "bmi": "continuous",
    "pixel_spacing_x": "continuous",
    "pixel_spacing_y": "continuous",
    "gestational_age": "continuous",
    "preterm": "categorical",
    "birth_weight": "continuous",
    "referral": "categorical",
}
#: Class names of the categorical columns whose classes do not depend on options.
PRETERM_CLASSES: tuple[str, ...] = ("term", "preterm")
REFERRAL_CLASSES: tuple[str, ...] = ("routine", "referred")
#: P(referred | risk class), in :data:`RISK_CLASSES` order.
REFERRAL_PROBABILITY: tuple[float, ...] = (0.75, 0.5, 0.25)
#: Metadata columns that ``missing_fraction`` may blank (all but the primary ``risk``), in draw order.
_BLANKABLE: tuple[str, ...] = ("scanner", "hospital", "cervical_length", "pixel_spacing", "bmi")
#: Blankable clinical columns, drawn from the clinical stream (``preterm`` is a possible target: never blank).
_CLINICAL_BLANKABLE: tuple[str, ...] = ("gestational_age", "birth_weight")
#: Added to a split's generator seed to seed the clinical outcome stream.
CLINICAL_STREAM_OFFSET = 1_000_003
GESTATIONAL_AGE_RANGE: tuple[float, float] = (18.0, 24.0)
BIRTH_WEIGHT_RANGE: tuple[float, float] = (400.0, 5000.0)

RISK_CLASSES: tuple[str, ...] = ("short", "intermediate", "normal")
#: Cervical length range (mm) per risk class, lower inclusive.
RISK_LENGTH_RANGES: tuple[tuple[float, float], ...] = ((15.0, 25.0), (25.0, 35.0), (35.0, 50.0))
#: Value ranges of the continuous columns (bmi: clamp range of a normal draw).
CONTINUOUS_RANGES: dict[str, tuple[float, float]] = {
    "cervical_length": (RISK_LENGTH_RANGES[0][0], RISK_LENGTH_RANGES[-1][1]),
    "pixel_spacing": PIXEL_SPACING_RANGE,
    "bmi": BMI_RANGE,
    "gestational_age": GESTATIONAL_AGE_RANGE,
    "birth_weight": BIRTH_WEIGHT_RANGE,
}

SPLITS: tuple[str, ...] = ("train", "val", "test")
IN_CHANNELS: tuple[int, ...] = (1, 8)
SEGMENTATION_CHANNELS: tuple[str, ...] = ("canal", "anterior_lip", "posterior_lip", "internal_os", "external_os")

# Geometry in reference pixels / mm (see render_ultrasound).
_APEX_Y = -12.0  # probe apex slightly above the image, like a transvaginal fan
_CERVIX_CENTER = (112.0, 144.0)  # (y, x) reference px
_CENTER_JITTER = (10.0, 12.0)  # +- reference px
_ANGLE_JITTER_DEG = 20.0  # +- band orientation
_CANAL_HALF_WIDTH_MM = 1.1
_LIP_WIDTH_MM = (6.5, 9.0)  # stroma thickness on each side of the canal
_LIP_OVERHANG_MM = 2.5  # stroma extends this far beyond each os
_INTERNAL_OS_MM = 2.2
_EXTERNAL_OS_MM = 1.6
# Tissue echogenicity before speckle: background (the scanner chain's), dark stroma, bright canal, dark os.
_ECHO_LIPS, _ECHO_CANAL = TISSUE_ECHO_RANGE
_ECHO_OS = 0.05


def check_synthetic_options(
    *,
    image_size: object = REFERENCE_SIZE,
    in_channels: object = 1,
    shortcut_strength: object = 0.0,
    num_scanners: object = 3,
    num_hospitals: object = 4,
    missing_fraction: object = 0.0,
    normalization: object = "sononet",
) -> list[Problem]:
    """Problems with the generation options (empty when all are valid), in the order the options are listed.

    Shared by the dataset (raises them at once) and the datamodule (collects them with its own).
    """
    errors = scanner_option_problems(image_size=image_size)
    if not is_int(in_channels) or in_channels not in IN_CHANNELS:
        errors.append(Problem("in_channels", "must be 1 (image only) or 8 (image + 5 segmentation maps + 2 spacing "
                                             f"planes, SA-SonoNet), got {in_channels!r}"))
    if not is_number(shortcut_strength) or not 0.0 <= shortcut_strength <= 1.0:  # type: ignore[operator]
        errors.append(Problem("shortcut_strength", f"must be a number in [0, 1], got {shortcut_strength!r}"))
    errors += scanner_option_problems(num_scanners=num_scanners, num_hospitals=num_hospitals)
    if not is_number(missing_fraction) or not 0.0 <= missing_fraction < 1.0:  # type: ignore[operator]
        errors.append(Problem("missing_fraction", f"must be a number in [0, 1), got {missing_fraction!r}"))
    if normalization not in NORMALIZATIONS:
        errors.append(Problem("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}"))
    return errors



# --------------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------------


def sample_metadata(
    n: int,
    *,
    shortcut_strength: float,
    num_scanners: int,
    num_hospitals: int,
    missing_fraction: float,
    generator: torch.Generator,
    image_size: Sequence[int] = REFERENCE_SIZE,
) -> dict[str, Tensor]:
    """Draw ``n`` samples' metadata on the generator's device (``image_size``: the size the images are rendered at,
    which sets ``pixel_spacing_x``/``pixel_spacing_y``).

    Returns the reported columns of :data:`SYNTHETIC_COLUMNS` (categorical: int64 codes, -1 when missing;
    continuous: float64, NaN when missing; ``risk`` never missing) plus ``true_<column>`` with the un-blanked value
    for every column that can be blanked. Renderers must use the ``true_`` entries.

    The draws happen in a fixed order and do not depend on the option values (only how they are combined does), so
    e.g. changing ``shortcut_strength`` changes only the scanner column.
    """
    if not is_int(n) or n < 0:
        raise ValueError(f"n: must be a non-negative integer, got {n!r}")
    raise_if(
        check_synthetic_options(
            shortcut_strength=shortcut_strength,
            num_scanners=num_scanners,
            num_hospitals=num_hospitals,
            missing_fraction=missing_fraction,
        )
    )
    dev = generator.device
    f64 = torch.float64

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=dev, dtype=f64)

    risk = torch.randint(0, len(RISK_CLASSES), (n,), generator=generator, device=dev)
    ranges = torch.tensor(RISK_LENGTH_RANGES, dtype=f64, device=dev)
    lo, hi = ranges[risk, 0], ranges[risk, 1]
    length = lo + rand(n) * (hi - lo)

    true = {"cervical_length": length, **sample_acquisition(risk, shortcut_strength=shortcut_strength,
                                                             num_scanners=num_scanners, num_hospitals=num_hospitals,
                                                             generator=generator)}
    spacing = true["pixel_spacing"]
    blank = rand(n, len(_BLANKABLE)) < float(missing_fraction)  # always drawn, so the stream does not depend on it
    out: dict[str, Tensor] = {"risk": risk}
    for j, col in enumerate(_BLANKABLE):
        value = true[col]
        missing = torch.full_like(value, -1 if SYNTHETIC_COLUMNS[col] == "categorical" else math.nan)
        out[col] = torch.where(blank[:, j], missing, value)
    for col in _BLANKABLE:
        out[f"true_{col}"] = true[col]

    h, w = int(image_size[0]), int(image_size[1])
    for col, true_value in (("pixel_spacing_x", spacing * REFERENCE_SIZE[1] / w),
                            ("pixel_spacing_y", spacing * REFERENCE_SIZE[0] / h)):
        out[col] = torch.where(blank[:, _BLANKABLE.index("pixel_spacing")], math.nan, true_value)
        out[f"true_{col}"] = true_value
    out.update(_sample_clinical(length, missing_fraction, generator))
    return out


def _sample_clinical(length: Tensor, missing_fraction: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Gestational age, sPTB outcome and birth weight (module docstring), from their own stream."""
    n, dev, f64 = length.shape[0], length.device, torch.float64
    clinical = torch.Generator(device=dev).manual_seed(generator.initial_seed() + CLINICAL_STREAM_OFFSET)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=clinical, device=dev, dtype=f64)

    ga_lo, ga_hi = GESTATIONAL_AGE_RANGE
    gestational_age = ga_lo + rand(n) * (ga_hi - ga_lo)
    preterm = (rand(n) < torch.sigmoid((25.0 - length) / 3.5)).to(torch.int64)
    delivery_week = torch.where(preterm.bool(), 28.0 + 9.0 * rand(n), 37.0 + 4.5 * rand(n))
    noise = torch.randn(n, generator=clinical, device=dev, dtype=f64)
    birth_weight = (3400.0 - 190.0 * (39.5 - delivery_week) + 350.0 * noise).clamp(*BIRTH_WEIGHT_RANGE)
    blank = rand(n, len(_CLINICAL_BLANKABLE)) < float(missing_fraction)
    # drawn last, so adding it left every earlier draw of this stream unchanged
    risk = torch.bucketize(length, torch.tensor([r[1] for r in RISK_LENGTH_RANGES[:-1]], dtype=f64, device=dev),
                           right=True)
    referral_p = torch.tensor(REFERRAL_PROBABILITY, dtype=f64, device=dev)[risk]
    referral = (rand(n) < referral_p).to(torch.int64)
    out = {"preterm": preterm, "referral": referral}
    for j, (col, value) in enumerate((("gestational_age", gestational_age), ("birth_weight", birth_weight))):
        out[col] = torch.where(blank[:, j], math.nan, value)
        out[f"true_{col}"] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def _true(meta: Mapping[str, Tensor], col: str, device: torch.device) -> Tensor:
    """The true value of a column (``true_<col>`` if present, else ``<col>``, which must then be complete)."""
    value = meta.get(f"true_{col}", meta.get(col))
    if value is None:
        raise KeyError(f"render_ultrasound needs {col!r} (or 'true_{col}') in meta")
    value = value.to(device)
    bad = (value < 0) if SYNTHETIC_COLUMNS[col] == "categorical" else torch.isnan(value)
    if bool(bad.any()):
        raise ValueError(f"render_ultrasound: {col!r} has missing values; pass the 'true_{col}' entries to render")
    return value


def _soft_inside(signed_distance: Tensor, softness: Tensor | float) -> Tensor:
    """Soft indicator of ``signed_distance > 0`` (about one rendered pixel wide edge)."""
    return torch.sigmoid(signed_distance / softness)



def _cervix(length: Tensor, spacing: Tensor, pose: Tensor, texture_field: Tensor,
            image_size: Sequence[int]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The cervix content: echogenicity (n, H, W) and the soft maps of :data:`SEGMENTATION_CHANNELS`, each
    (n, H, W), from the canal ``length`` (mm), ``spacing`` (mm per reference pixel), ``pose`` ((n, 4) in [-1, 1):
    centre y, centre x, angle, lip width) and the background ``texture_field``."""
    n = length.shape[0]
    yr, xr = pixel_grid(image_size, length.device)
    sp = spacing.view(n, 1, 1)
    mm_y, mm_x = mm_per_pixel(spacing, image_size)
    soft_mm = 0.5 * (mm_y + mm_x) / 2  # edge softness: half a rendered pixel

    # Cervix frame in mm: t along the canal (internal os at +L/2, right), s across it (positive = anterior, up).
    cy = (_CERVIX_CENTER[0] + _CENTER_JITTER[0] * pose[:, 0]).view(n, 1, 1)
    cx = (_CERVIX_CENTER[1] + _CENTER_JITTER[1] * pose[:, 1]).view(n, 1, 1)
    ang = torch.deg2rad(_ANGLE_JITTER_DEG * pose[:, 2]).view(n, 1, 1)
    lip_w = (_LIP_WIDTH_MM[0] + (_LIP_WIDTH_MM[1] - _LIP_WIDTH_MM[0]) * (pose[:, 3] + 1) / 2).view(n, 1, 1)
    px, py = (xr - cx) * sp, (yr - cy) * sp
    cos, sin = torch.cos(ang), torch.sin(ang)
    t = px * cos + py * sin
    s = px * sin - py * cos  # image y grows downwards, so flip to make s positive above the canal
    half_len = (length / 2).view(n, 1, 1)

    beyond = (t.abs() - half_len).clamp_min(0.0)
    canal = _soft_inside(_CANAL_HALF_WIDTH_MM - torch.sqrt(s**2 + beyond**2), soft_mm)
    internal_os = _soft_inside(_INTERNAL_OS_MM - torch.sqrt((t - half_len) ** 2 + s**2), soft_mm)
    external_os = _soft_inside(_EXTERNAL_OS_MM - torch.sqrt((t + half_len) ** 2 + s**2), soft_mm)
    os_any = torch.maximum(internal_os, external_os)
    # Stroma: an ellipse around the canal, split by the canal line into anterior and posterior lip.
    a = half_len + _LIP_OVERHANG_MM
    q = torch.sqrt((t / a) ** 2 + (s / lip_w) ** 2)
    body = _soft_inside((1.0 - q) * lip_w, soft_mm)
    canal = canal * (1 - os_any)
    rest = body * (1 - canal) * (1 - os_any)
    anterior = rest * _soft_inside(s, soft_mm)
    posterior = rest * _soft_inside(-s, soft_mm)

    # Tissue echogenicity: smooth background texture, darker stroma, bright canal, dark os.
    echo = background_echo(texture_field, spacing, image_size)
    echo = echo + (_ECHO_LIPS - echo) * (anterior + posterior)
    echo = echo + (_ECHO_CANAL - echo) * canal
    echo = echo + (_ECHO_OS - echo) * os_any
    return echo, (canal, anterior, posterior, internal_os, external_os)


def render_ultrasound(
    meta: Mapping[str, Tensor],
    image_size: tuple[int, int],
    *,
    num_scanners: int,
    num_hospitals: int,
    generator: torch.Generator,
    with_segmentation: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Render one synthetic cervix scan per row of ``meta`` directly at ``image_size``, on the generator's device.

    Uses the true ``scanner``, ``hospital``, ``pixel_spacing`` and ``cervical_length`` (``true_<col>`` entries when
    present); ``bmi`` and ``risk`` are ignored (``risk`` acts only through the length). Draws, in this order, the
    cervix pose jitter, the speckle field and the background texture from ``generator``; the cervix content then
    goes through the shared scanner chain :func:`acquire`.

    Returns:
        ``image`` (n, 1, H, W) float32 in [0, 1], and ``segmentation`` (n, 5, H, W) float32 in [0, 1]
        (:data:`SEGMENTATION_CHANNELS`) when ``with_segmentation``, else ``None``.
    """
    raise_if(scanner_option_problems(image_size=image_size, num_scanners=num_scanners, num_hospitals=num_hospitals))
    h, w = int(image_size[0]), int(image_size[1])
    dev = generator.device
    f32 = torch.float32
    scanner = _true(meta, "scanner", dev).long()
    hospital = _true(meta, "hospital", dev).long()
    spacing = _true(meta, "pixel_spacing", dev).to(f32)  # mm per reference pixel
    length = _true(meta, "cervical_length", dev).to(f32)  # mm
    n = scanner.shape[0]
    if n and (int(scanner.max()) >= num_scanners or int(hospital.max()) >= num_hospitals):
        raise ValueError("render_ultrasound: scanner/hospital codes exceed num_scanners/num_hospitals")

    # Random draws (fixed order; the stream layout is part of the determinism contract).
    pose = torch.rand(n, 4, generator=generator, device=dev, dtype=f32) * 2 - 1  # in [-1, 1)
    speckle_field = torch.randn(n, 2, h, w, generator=generator, device=dev, dtype=f32)
    texture_field = torch.randn(n, 1, h, w, generator=generator, device=dev, dtype=f32)

    echo, maps = _cervix(length, spacing, pose, texture_field, (h, w))
    img = acquire(echo, scanner, hospital, spacing, (h, w), num_scanners=num_scanners, num_hospitals=num_hospitals,
                  speckle_field=speckle_field)

    seg = None
    if with_segmentation:
        seg = torch.stack(maps, dim=1) * sector_mask(scanner, (h, w)).unsqueeze(1)
        seg = seg.clamp(0.0, 1.0)
    return img, seg


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


def split_generator(seed: int, split: str) -> torch.Generator:
    """The generator of one split: an injective ``(seed, split) -> stream``, so splits never share draws and seeds
    never collide."""
    return torch.Generator().manual_seed(3 * seed + SPLITS.index(split))


def column_classes(column: str, num_scanners: int, num_hospitals: int) -> list[str]:
    """Class names, in code order, of a categorical column."""
    if column == "risk":
        return list(RISK_CLASSES)
    if column == "scanner":
        return scanner_names(num_scanners)
    if column == "hospital":
        return hospital_names(num_hospitals)
    if column == "preterm":
        return list(PRETERM_CLASSES)
    if column == "referral":
        return list(REFERRAL_CLASSES)
    if column in SYNTHETIC_COLUMNS:
        raise ValueError(f"column {column!r} is continuous; it has no classes until binned")
    raise KeyError(f"unknown column {column!r}; available: {', '.join(SYNTHETIC_COLUMNS)}")


class SyntheticUltrasoundDataset(GeneratedImageDataset):
    """One split of the synthetic cervix data, rendered once (in chunks) in ``__init__`` and held in memory.

    Attributes:
        columns: reported metadata (as from :func:`sample_metadata`, without the ``true_`` entries).
        true_columns: the un-blanked values of every column (what was rendered).
        images: (n, 1, H, W) float32, normalised image channel.
        segmentation: (n, 5, H, W) float16 maps in [0, 1] when ``in_channels == 8``, else ``None`` (half precision
            halves the memory of the largest tensor; maps are converted back to float32 per item).
        spacing_xy: (n, 2) float32 true pixel spacing x, y in mm per pixel at the rendered size.
        ids: ``"<split>-000123"`` per sample (the row number in the pool of ``n``).
        rows: the pool rows this dataset holds (``range(n)`` without ``rows``).

    Items: ``{"image": (C, H, W) float32, "targets": {task: int64 scalar}, "id": str, "index": int}``. Until
    :meth:`set_targets` is called the targets are ``{"risk": risk code}``. The shortcut only applies to the
    ``train`` split; ``val``/``test`` are always drawn with ``shortcut_strength = 0``. Memory is about
    ``n * H * W * (4 + 10 * [in_channels == 8])`` bytes.
    """

    def __init__(
        self,
        split: str,
        n: int,
        *,
        image_size: Sequence[int] = (64, 80),
        in_channels: int = 1,
        shortcut_strength: float = 0.0,
        num_scanners: int = 3,
        num_hospitals: int = 4,
        missing_fraction: float = 0.0,
        normalization: str = "sononet",
        seed: int = 0,
        rows: Sequence[int] | None = None,
    ) -> None:
        errors = check_synthetic_options(
            image_size=image_size,
            in_channels=in_channels,
            shortcut_strength=shortcut_strength,
            num_scanners=num_scanners,
            num_hospitals=num_hospitals,
            missing_fraction=missing_fraction,
            normalization=normalization,
        )
        if not is_int(n) or n < 1:
            errors.append(Problem("n", f"must be a positive integer, got {n!r}"))
        errors += split_problems(split, SPLITS, n, seed, rows)
        raise_if(errors)

        self.split = split
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = in_channels
        self.num_scanners = num_scanners
        self.num_hospitals = num_hospitals
        self.normalization = normalization
        # The shortcut is a property of the training set only: evaluation splits show the unbiased relation.
        self.shortcut_strength = float(shortcut_strength) if split == "train" else 0.0
        generator = split_generator(seed, split)

        meta = sample_metadata(
            n,
            shortcut_strength=self.shortcut_strength,
            num_scanners=num_scanners,
            num_hospitals=num_hospitals,
            missing_fraction=float(missing_fraction),
            generator=generator,
            image_size=self.image_size,
        )
        self.rows: list[int] = list(range(n)) if rows is None else [int(r) for r in rows]
        if rows is not None:
            index = torch.tensor(self.rows, dtype=torch.int64)
            meta = {k: v[index] for k, v in meta.items()}
        n = len(self.rows)
        self.columns: dict[str, Tensor] = {col: meta[col] for col in SYNTHETIC_COLUMNS}
        self.true_columns: dict[str, Tensor] = {
            col: meta.get(f"true_{col}", meta[col]) for col in SYNTHETIC_COLUMNS
        }

        with_seg = in_channels == 8
        images, segs = [], []
        chunk_size = render_chunk_size(self.image_size)
        for start in range(0, n, chunk_size):
            chunk = {k: v[start : start + chunk_size] for k, v in meta.items()}
            img, seg = render_ultrasound(
                chunk,
                self.image_size,
                num_scanners=num_scanners,
                num_hospitals=num_hospitals,
                generator=generator,
                with_segmentation=with_seg,
            )
            images.append(normalize_image(img, normalization))
            if seg is not None:
                segs.append(seg.to(torch.float16))
        self.images: Tensor = torch.cat(images)
        self.segmentation: Tensor | None = torch.cat(segs) if with_seg else None
        self.spacing_xy: Tensor = torch.stack(
            [self.true_columns["pixel_spacing_x"], self.true_columns["pixel_spacing_y"]], dim=1
        ).to(torch.float32)
        self.ids: list[str] = [f"{split}-{i:06d}" for i in self.rows]
        self._targets: dict[str, Tensor] = {"risk": self.columns["risk"]}

    def column_classes(self, column: str) -> list[str]:
        """Class names, in code order, of a categorical column."""
        return column_classes(column, self.num_scanners, self.num_hospitals)

    def input(self, i: int) -> Tensor:
        """The model input of sample ``i``: (C, H, W) float32 (see the module docstring for the channel order)."""
        image = self.images[i]
        if self.segmentation is None:
            return image
        h, w = self.image_size
        planes = self.spacing_xy[i].view(2, 1, 1).expand(2, h, w)
        return torch.cat([image, self.segmentation[i].to(torch.float32), planes], dim=0)
