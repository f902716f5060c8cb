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
Every dataset rendered through these scanners (also :mod:`wsca_lightning.data.fashion`) uses this one chain.

Subsets (``rows``): the dataset draws the metadata of all ``n`` rows (the pool) and renders only the chosen rows,
so the paper's balanced / biased training sets (:func:`~wsca_lightning.data.splits.select_subset`) cost only the
images they use. Ids keep the pool row number.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsca_lightning.data.base import GeneratedImageDataset
from wsca_lightning.data.transforms import NORMALIZATIONS, normalize_image
from wsca_lightning.plain import is_int

__all__ = [
    "CLINICAL_STREAM_OFFSET",
    "CONTINUOUS_RANGES",
    "HOSPITAL_LIMITS",
    "IN_CHANNELS",
    "PRETERM_CLASSES",
    "REFERRAL_CLASSES",
    "REFERRAL_PROBABILITY",
    "REFERENCE_SIZE",
    "RENDER_PIXELS_PER_CHUNK",
    "RISK_CLASSES",
    "RISK_LENGTH_RANGES",
    "SCANNER_LIMITS",
    "SCANNER_TABLE",
    "SEGMENTATION_CHANNELS",
    "SPLITS",
    "SYNTHETIC_COLUMNS",
    "SyntheticUltrasoundDataset",
    "TISSUE_ECHO_RANGE",
    "acquire",
    "background_echo",
    "check_synthetic_options",
    "column_classes",
    "hospital_names",
    "mm_per_pixel",
    "pixel_grid",
    "render_chunk_size",
    "render_ultrasound",
    "sample_metadata",
    "scanner_names",
    "sector_mask",
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
PIXEL_SPACING_RANGE: tuple[float, float] = (0.24, 0.32)
BMI_MEAN_STD: tuple[float, float] = (27.0, 5.0)
BMI_RANGE: tuple[float, float] = (16.0, 45.0)
#: Value ranges of the continuous columns (bmi: clamp range of a normal draw).
CONTINUOUS_RANGES: dict[str, tuple[float, float]] = {
    "cervical_length": (RISK_LENGTH_RANGES[0][0], RISK_LENGTH_RANGES[-1][1]),
    "pixel_spacing": PIXEL_SPACING_RANGE,
    "bmi": BMI_RANGE,
    "gestational_age": GESTATIONAL_AGE_RANGE,
    "birth_weight": BIRTH_WEIGHT_RANGE,
}

#: (H, W) at which ``pixel_spacing`` is defined (SA-SonoNet's input size).
REFERENCE_SIZE: tuple[int, int] = (224, 288)
SPLITS: tuple[str, ...] = ("train", "val", "test")
IN_CHANNELS: tuple[int, ...] = (1, 8)
SCANNER_LIMITS: tuple[int, int] = (2, 6)
HOSPITAL_LIMITS: tuple[int, int] = (2, 8)
#: Pixels rendered per vectorised call. Chunks small enough to stay in cache render 2-5x faster than one big
#: batch on CPU; the chunk size depends only on the image size, so it is part of the determinism contract.
RENDER_PIXELS_PER_CHUNK = 2**18


def render_chunk_size(image_size: Sequence[int]) -> int:
    """Samples per :func:`render_ultrasound` call in the dataset (51 at 64 x 80, 4 at 224 x 288)."""
    return max(1, RENDER_PIXELS_PER_CHUNK // (int(image_size[0]) * int(image_size[1])))

SEGMENTATION_CHANNELS: tuple[str, ...] = ("canal", "anterior_lip", "posterior_lip", "internal_os", "external_os")

#: Scanner appearance, one row per device. Columns: gain, gamma, psf_mm (PSF Gaussian sigma), grain_mm (speckle
#: correlation sigma), attenuation (intensity falls as exp(-a * depth / sector radius)), half_angle_deg (sector half
#: opening), radius (sector depth in reference pixels from the apex, 12 px above the top edge).
#: A fixed table rather than a formula so that every device stays clearly distinguishable by eye.
SCANNER_TABLE: tuple[tuple[float, ...], ...] = (
    # gain  gamma  psf   grain  atten  half  radius
    (1.00, 1.00, 0.30, 0.45, 0.40, 72.0, 234.0),  # A: wide deep fan, sharp, fine speckle
    (1.25, 1.45, 1.00, 0.80, 0.70, 52.0, 220.0),  # B: narrow fan, dark and contrasty, blurry
    (1.05, 0.70, 0.60, 1.15, 0.15, 62.0, 212.0),  # C: bright and flat, coarse speckle, shallow
    (0.95, 1.25, 0.45, 1.00, 0.55, 66.0, 228.0),  # D: medium fan, slightly dark, medium-coarse speckle
    (1.20, 0.85, 0.85, 0.60, 0.30, 56.0, 216.0),  # E: narrow-medium fan, bright, soft
    (0.85, 1.10, 0.25, 0.90, 0.90, 75.0, 224.0),  # F: widest fan, sharp, strong depth fall-off
)

#: Top-left corner of each hospital's burnt-in marker as a fraction of the free range (H - m, W - m).
_HOSPITAL_MARKERS: tuple[tuple[float, float], ...] = (
    (0.02, 0.02),
    (0.02, 0.98),
    (0.98, 0.02),
    (0.98, 0.98),
    (0.02, 0.14),
    (0.02, 0.86),
    (0.98, 0.14),
    (0.98, 0.86),
)

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
_BACKGROUND_TEXTURE_MM = 6.0  # scale of the smooth tissue-brightness variation
# Tissue echogenicity before speckle.
_ECHO_BACKGROUND, _ECHO_LIPS, _ECHO_CANAL, _ECHO_OS = 0.5, 0.2, 1.3, 0.05
_BRIGHTNESS = 0.85  # overall scale before the scanner gain (mean speckle amplitude is ~0.89)


def scanner_names(num_scanners: int) -> list[str]:
    """``["scanner_A", "scanner_B", ...]``."""
    _check_range("num_scanners", num_scanners, SCANNER_LIMITS)
    return [f"scanner_{chr(ord('A') + i)}" for i in range(num_scanners)]


def hospital_names(num_hospitals: int) -> list[str]:
    """``["hospital_1", "hospital_2", ...]``."""
    _check_range("num_hospitals", num_hospitals, HOSPITAL_LIMITS)
    return [f"hospital_{i + 1}" for i in range(num_hospitals)]


def _range_problems(name: str, value: object, limits: tuple[int, int]) -> list[str]:
    if not is_int(value) or not limits[0] <= value <= limits[1]:  # type: ignore[operator]
        return [f"{name}: must be an integer in [{limits[0]}, {limits[1]}], got {value!r}"]
    return []


def _check_range(name: str, value: object, limits: tuple[int, int]) -> None:
    _raise_if(_range_problems(name, value, limits))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_synthetic_options(
    *,
    image_size: object = REFERENCE_SIZE,
    in_channels: object = 1,
    shortcut_strength: object = 0.0,
    num_scanners: object = 3,
    num_hospitals: object = 4,
    missing_fraction: object = 0.0,
    normalization: object = "sononet",
) -> list[str]:
    """Problems with the generation options, one ``"<key>: <message>"`` line each (empty when all are valid).

    Shared by the dataset (raises on the first call) and the datamodule (collects everything into one error).
    """
    errors: list[str] = []
    size = tuple(image_size) if isinstance(image_size, Sequence) and not isinstance(image_size, str) else None
    if size is None or len(size) != 2 or not all(is_int(s) and s > 0 and s % 16 == 0 for s in size):
        errors.append(
            f"image_size: must be (H, W) with both sides positive multiples of 16 (the backbone halves it 4 times), "
            f"got {image_size!r}"
        )
    if not is_int(in_channels) or in_channels not in IN_CHANNELS:
        errors.append(
            f"in_channels: must be 1 (image only) or 8 (image + 5 segmentation maps + 2 spacing planes, "
            f"SA-SonoNet), got {in_channels!r}"
        )
    if not _is_number(shortcut_strength) or not 0.0 <= shortcut_strength <= 1.0:  # type: ignore[operator]
        errors.append(f"shortcut_strength: must be a number in [0, 1], got {shortcut_strength!r}")
    errors += _range_problems("num_scanners", num_scanners, SCANNER_LIMITS)
    errors += _range_problems("num_hospitals", num_hospitals, HOSPITAL_LIMITS)
    if not _is_number(missing_fraction) or not 0.0 <= missing_fraction < 1.0:  # type: ignore[operator]
        errors.append(f"missing_fraction: must be a number in [0, 1), got {missing_fraction!r}")
    if normalization not in NORMALIZATIONS:
        errors.append(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    return errors


def _raise_if(errors: list[str]) -> None:
    if errors:
        raise ValueError("\n".join(errors))


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
    _raise_if(
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

    # Shortcut: with probability s take the preferred scanner, else a uniform one, which gives exactly
    # P(preferred | risk) = s + (1 - s) / S and (1 - s) / S for each other scanner.
    take_preferred = rand(n) < float(shortcut_strength)
    uniform_scanner = torch.randint(0, num_scanners, (n,), generator=generator, device=dev)
    scanner = torch.where(take_preferred, risk % num_scanners, uniform_scanner)

    hospital = torch.randint(0, num_hospitals, (n,), generator=generator, device=dev)
    sp_lo, sp_hi = PIXEL_SPACING_RANGE
    spacing = sp_lo + rand(n) * (sp_hi - sp_lo)
    bmi = (BMI_MEAN_STD[0] + BMI_MEAN_STD[1] * torch.randn(n, generator=generator, device=dev, dtype=f64)).clamp(
        *BMI_RANGE
    )

    true = {"scanner": scanner, "hospital": hospital, "cervical_length": length, "pixel_spacing": spacing, "bmi": bmi}
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


def _gaussian_filter(x: Tensor, sigma_y: Tensor, sigma_x: Tensor, pad: int = 0) -> Tensor:
    """Per-sample Gaussian smoothing in the Fourier domain (vectorised over samples with different widths).

    ``x``: (n, c, H, W); ``sigma_*``: (n,) in pixels. ``pad`` > 0 replicates edges first so the circular convolution
    does not wrap intensity across borders (unnecessary for stationary noise).
    """
    h, w = x.shape[-2:]
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    hp, wp = x.shape[-2:]
    fy = torch.fft.fftfreq(hp, device=x.device, dtype=x.dtype).view(1, 1, hp, 1)
    fx = torch.fft.rfftfreq(wp, device=x.device, dtype=x.dtype).view(1, 1, 1, -1)
    sy = sigma_y.to(x.dtype).view(-1, 1, 1, 1)
    sx = sigma_x.to(x.dtype).view(-1, 1, 1, 1)
    transfer = torch.exp(-2.0 * math.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2))
    out = torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=(hp, wp))
    return out[..., pad : pad + h, pad : pad + w] if pad > 0 else out


def _soft_inside(signed_distance: Tensor, softness: Tensor | float) -> Tensor:
    """Soft indicator of ``signed_distance > 0`` (about one rendered pixel wide edge)."""
    return torch.sigmoid(signed_distance / softness)


def _ramp(signed_distance: Tensor, width: float) -> Tensor:
    """Linear 0 -> 1 edge over ``width`` centred on 0: exactly 0 (black) outside, unlike a sigmoid tail."""
    return (0.5 + signed_distance / width).clamp(0.0, 1.0)


def _hospital_markers(num_hospitals: int, h: int, w: int, device: torch.device) -> Tensor:
    """(num_hospitals, H, W) binary masks of each site's burnt-in marker."""
    m = max(2, round(h / 32))  # at least 2 px so it survives at 64 x 80
    masks = torch.zeros(num_hospitals, h, w, device=device)
    for k in range(num_hospitals):
        fr, fc = _HOSPITAL_MARKERS[k]
        r, c = round(fr * (h - m)), round(fc * (w - m))
        masks[k, r : r + m, c : c + m] = 1.0
    return masks


#: Echogenicity range of the cervix's tissue before speckle (dark stroma .. bright canal; background 0.5): other
#: content renderers (:mod:`wsca_lightning.data.fashion`) map their content into it.
TISSUE_ECHO_RANGE: tuple[float, float] = (_ECHO_LIPS, _ECHO_CANAL)


def pixel_grid(image_size: Sequence[int], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Centres of the rendered pixels in *reference* pixels (:data:`REFERENCE_SIZE`): ``y`` of shape (1, H, 1) and
    ``x`` of shape (1, 1, W), float32. Geometry defined in reference pixels lands at the same place at every size."""
    h, w = int(image_size[0]), int(image_size[1])
    f32 = torch.float32
    yr = ((torch.arange(h, device=device, dtype=f32) + 0.5) * (REFERENCE_SIZE[0] / h)).view(1, h, 1)
    xr = ((torch.arange(w, device=device, dtype=f32) + 0.5) * (REFERENCE_SIZE[1] / w)).view(1, 1, w)
    return yr, xr


def mm_per_pixel(spacing: Tensor, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """mm per *rendered* pixel along y and x, each (n, 1, 1) float32, from ``spacing`` (n,) in mm per reference
    pixel (anisotropic when the aspect ratio differs from the reference)."""
    n = spacing.shape[0]
    sp = spacing.to(torch.float32).view(n, 1, 1)
    return sp * (REFERENCE_SIZE[0] / int(image_size[0])), sp * (REFERENCE_SIZE[1] / int(image_size[1]))


def background_echo(texture_field: Tensor, spacing: Tensor, image_size: Sequence[int]) -> Tensor:
    """Tissue echogenicity of the background, (n, H, W): 0.5 modulated +-20 % per standard
    deviation by ``texture_field`` ((n, 1, H, W) standard normal draws) smoothed over 6 mm (so in pixels it follows
    ``spacing``, mm per reference pixel)."""
    n = texture_field.shape[0]
    mm_y, mm_x = mm_per_pixel(spacing.to(texture_field.device), image_size)
    texture = _gaussian_filter(
        texture_field, _BACKGROUND_TEXTURE_MM / mm_y.view(n), _BACKGROUND_TEXTURE_MM / mm_x.view(n)
    )
    texture = texture / texture.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return _ECHO_BACKGROUND * (1 + 0.2 * texture[:, 0])


def _sector(table: Tensor, image_size: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Sector (fan) mask (n, H, W) of the scanners whose :data:`SCANNER_TABLE` rows are ``table`` (n, 7), and the
    distance from the probe apex (1, H, W) in reference pixels."""
    n = table.shape[0]
    h, w = int(image_size[0]), int(image_size[1])
    half_angle = torch.deg2rad(table[:, 5].view(n, 1, 1))
    radius = table[:, 6].view(n, 1, 1)
    yr, xr = pixel_grid(image_size, device)
    # Radius and angle from the apex above the top centre.
    dx, dy = xr - REFERENCE_SIZE[1] / 2, yr - _APEX_Y
    r = torch.sqrt(dx**2 + dy**2)
    theta = torch.atan2(dx, dy)  # 0 straight down
    edge = (REFERENCE_SIZE[0] / h + REFERENCE_SIZE[1] / w) / 2  # one rendered pixel, in reference pixels
    angular_margin = r * torch.sin((half_angle - theta.abs()).clamp(-math.pi / 2, math.pi / 2))
    sector = _ramp(radius - r, edge) * _ramp(angular_margin, edge) * _ramp(r - 8.0, edge)
    return sector, r


def _scanner_rows(scanner: Tensor, device: torch.device) -> Tensor:
    return torch.tensor(SCANNER_TABLE, dtype=torch.float32, device=device)[scanner.to(device).long()]


def sector_mask(scanner: Tensor, image_size: Sequence[int]) -> Tensor:
    """(n, H, W) float32 field of view of each row's scanner (``scanner``: (n,) codes): 1 inside the fan, exactly 0
    outside, a one-pixel linear edge."""
    return _sector(_scanner_rows(scanner, scanner.device), image_size, scanner.device)[0]


def acquire(
    echo: Tensor,
    scanner: Tensor,
    hospital: Tensor,
    spacing: Tensor,
    image_size: Sequence[int],
    *,
    num_scanners: int,
    num_hospitals: int,
    speckle_field: Tensor,
) -> Tensor:
    """The simulated scanners' acquisition chain, shared by every content renderer (cervix, Fashion-MNIST).

    Args:
        echo: (n, H, W) tissue echogenicity (background about 0.5, the cervix's structures 0.05 .. 1.3).
        scanner, hospital: (n,) integer codes < ``num_scanners`` / ``num_hospitals``.
        spacing: (n,) mm per *reference* pixel (sets the speckle grain and PSF width in pixels).
        image_size: (H, W), multiples of 16.
        speckle_field: (n, 2, H, W) standard normal draws (real and imaginary part of the scatterers); the caller
            draws it, so each renderer keeps its own order of random draws.

    Applies, per row: speckle (Rayleigh multiplier correlated over the scanner's grain in mm), PSF blur, depth
    attenuation, gain, gamma, the sector mask and the hospital's burnt-in marker (:data:`SCANNER_TABLE`).

    Returns:
        (n, 1, H, W) float32 in [0, 1], on ``echo``'s device.
    """
    _raise_if(check_synthetic_options(image_size=image_size, num_scanners=num_scanners, num_hospitals=num_hospitals))
    h, w = int(image_size[0]), int(image_size[1])
    dev = echo.device
    n = echo.shape[0]
    if echo.shape != (n, h, w) or speckle_field.shape != (n, 2, h, w):
        raise ValueError(f"acquire: echo must be (n, {h}, {w}) and speckle_field (n, 2, {h}, {w}); got "
                         f"{tuple(echo.shape)} and {tuple(speckle_field.shape)}")
    scanner, hospital = scanner.to(dev).long(), hospital.to(dev).long()
    if scanner.shape != (n,) or hospital.shape != (n,) or spacing.shape != (n,):
        raise ValueError(f"acquire: scanner, hospital and spacing must have shape ({n},)")
    if n and (int(scanner.min()) < 0 or int(hospital.min()) < 0
              or int(scanner.max()) >= num_scanners or int(hospital.max()) >= num_hospitals):
        raise ValueError("acquire: scanner/hospital codes must lie in [0, num_scanners) / [0, num_hospitals)")
    table = _scanner_rows(scanner, dev)  # (n, 7)
    gain, gamma, psf_mm, grain_mm, atten, _, radius = (table[:, i].view(n, 1, 1) for i in range(7))
    mm_y, mm_x = mm_per_pixel(spacing.to(dev), image_size)
    sector, r = _sector(table, image_size, dev)

    # Speckle: magnitude of a complex Gaussian field correlated over the scanner's grain size (in mm, so the grain in
    # pixels follows the pixel spacing), normalised to unit mean power: a Rayleigh-distributed multiplier.
    grain = grain_mm.view(n)
    speckle = _gaussian_filter(speckle_field.to(dev), grain / mm_y.view(n), grain / mm_x.view(n))
    speckle = torch.sqrt(speckle[:, 0] ** 2 + speckle[:, 1] ** 2)
    speckle = speckle / torch.sqrt((speckle**2).mean(dim=(-2, -1), keepdim=True)).clamp_min(1e-6)

    # Scanner imaging chain: PSF blur, depth attenuation, gain, gamma; then the sector and burnt-in annotations.
    psf = psf_mm.view(n)
    sig_y, sig_x = psf / mm_y.view(n), psf / mm_x.view(n)
    pad = int(math.ceil(3 * float(torch.maximum(sig_y, sig_x).max()))) if n else 0
    img = _gaussian_filter((echo * speckle).unsqueeze(1), sig_y, sig_x, pad=pad)[:, 0]
    img = img * torch.exp(-atten * r / radius)
    img = (_BRIGHTNESS * gain * img).clamp(0.0, 1.0) ** gamma
    img = img * sector
    markers = _hospital_markers(num_hospitals, h, w, dev)[hospital]
    return torch.maximum(img, markers).clamp(0.0, 1.0).unsqueeze(1).contiguous()


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
    _raise_if(check_synthetic_options(image_size=image_size, num_scanners=num_scanners, num_hospitals=num_hospitals))
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
        if split not in SPLITS:
            errors.append(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        if not is_int(n) or n < 1:
            errors.append(f"n: must be a positive integer, got {n!r}")
        if not is_int(seed) or seed < 0:
            errors.append(f"seed: must be a non-negative integer, got {seed!r}")
        if rows is not None and is_int(n):
            rows = [int(r) for r in rows]
            if not rows or sorted(set(rows)) != rows or rows[0] < 0 or rows[-1] >= n:
                errors.append(f"rows: must be a non-empty increasing list of distinct rows in [0, {n}), got "
                              f"{len(rows)} rows")
        _raise_if(errors)

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
        self.rows: list[int] = list(range(n)) if rows is None else list(rows)
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
