"""The simulated scanners: the acquisition chain every generated dataset renders its content through.

A content renderer (the cervix of :mod:`wsca_lightning.data.synthetic`, the garments of
:mod:`wsca_lightning.data.fashion`) draws a tissue echogenicity map; :func:`acquire` turns it into a scan of one
device (:data:`SCANNER_TABLE`: speckle with the device's grain in mm, PSF blur, depth attenuation, gain, gamma, the
sector mask) at one site (the hospital's burnt-in marker). :func:`sample_acquisition` draws the columns every
generated dataset shares (scanner, with the label shortcut; hospital; pixel spacing; bmi) in one fixed order.

Geometry is defined in *reference* pixels (:data:`REFERENCE_SIZE`, where ``pixel_spacing`` is defined) and in mm,
so it lands at the same place at every rendered size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsca_lightning.plain import is_int
from wsca_lightning.problems import Problem, integer_range_problems, raise_if

__all__ = [
    "BMI_MEAN_STD",
    "BMI_RANGE",
    "HOSPITAL_LIMITS",
    "PIXEL_SPACING_RANGE",
    "REFERENCE_SIZE",
    "RENDER_PIXELS_PER_CHUNK",
    "SCANNER_LIMITS",
    "SCANNER_TABLE",
    "TISSUE_ECHO_RANGE",
    "acquire",
    "background_echo",
    "hospital_marker_masks",
    "hospital_names",
    "mm_per_pixel",
    "pixel_grid",
    "render_chunk_size",
    "sample_acquisition",
    "scanner_names",
    "scanner_option_problems",
    "sector_mask",
]

PIXEL_SPACING_RANGE: tuple[float, float] = (0.24, 0.32)
BMI_MEAN_STD: tuple[float, float] = (27.0, 5.0)
BMI_RANGE: tuple[float, float] = (16.0, 45.0)
#: (H, W) at which ``pixel_spacing`` is defined (SA-SonoNet's input size).
REFERENCE_SIZE: tuple[int, int] = (224, 288)
SCANNER_LIMITS: tuple[int, int] = (2, 6)
HOSPITAL_LIMITS: tuple[int, int] = (2, 8)
#: Pixels rendered per vectorised call. Chunks small enough to stay in cache render 2-5x faster than one big
#: batch on CPU; the chunk size depends only on the image size, so it is part of the determinism contract.
RENDER_PIXELS_PER_CHUNK = 2**18


def render_chunk_size(image_size: Sequence[int]) -> int:
    """Samples per :func:`render_ultrasound` call in the dataset (51 at 64 x 80, 4 at 224 x 288)."""
    return max(1, RENDER_PIXELS_PER_CHUNK // (int(image_size[0]) * int(image_size[1])))

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

_APEX_Y = -12.0  # probe apex slightly above the image, like a transvaginal fan
_BACKGROUND_TEXTURE_MM = 6.0  # scale of the smooth tissue-brightness variation
_ECHO_BACKGROUND = 0.5  # tissue echogenicity of the background before speckle
_BRIGHTNESS = 0.85  # overall scale before the scanner gain (mean speckle amplitude is ~0.89)
#: Echogenicity range of tissue before speckle (the cervix's dark stroma .. bright canal; background 0.5): every
#: content renderer maps its content into it.
TISSUE_ECHO_RANGE: tuple[float, float] = (0.2, 1.3)


def scanner_names(num_scanners: int) -> list[str]:
    """``["scanner_A", "scanner_B", ...]``."""
    raise_if(integer_range_problems("num_scanners", num_scanners, SCANNER_LIMITS))
    return [f"scanner_{chr(ord('A') + i)}" for i in range(num_scanners)]


def hospital_names(num_hospitals: int) -> list[str]:
    """``["hospital_1", "hospital_2", ...]``."""
    raise_if(integer_range_problems("num_hospitals", num_hospitals, HOSPITAL_LIMITS))
    return [f"hospital_{i + 1}" for i in range(num_hospitals)]



def scanner_option_problems(*, image_size: object = REFERENCE_SIZE, num_scanners: object = 3,
                            num_hospitals: object = 4) -> list[Problem]:
    """Problems of the options the scanner chain itself needs: the rendered size and the device and site counts."""
    problems: list[Problem] = []
    size = tuple(image_size) if isinstance(image_size, Sequence) and not isinstance(image_size, str) else None
    if size is None or len(size) != 2 or not all(is_int(s) and s > 0 and s % 16 == 0 for s in size):
        problems.append(Problem("image_size", "must be (H, W) with both sides positive multiples of 16 (the backbone "
                                              f"halves it 4 times), got {image_size!r}"))
    problems += integer_range_problems("num_scanners", num_scanners, SCANNER_LIMITS)
    problems += integer_range_problems("num_hospitals", num_hospitals, HOSPITAL_LIMITS)
    return problems


def sample_acquisition(label: Tensor, *, shortcut_strength: float, num_scanners: int, num_hospitals: int,
                       generator: torch.Generator) -> dict[str, Tensor]:
    """The columns every generated dataset draws after its label, in this fixed order: ``scanner`` (the shortcut),
    ``hospital``, ``pixel_spacing`` (uniform in :data:`PIXEL_SPACING_RANGE`) and ``bmi`` (``normal(27, 5)`` clamped
    to :data:`BMI_RANGE`, never rendered: a negative control).

    Shortcut: with probability ``s`` a row takes its label's preferred scanner ``label mod S``, else a uniform one,
    which gives exactly ``P(preferred | label) = s + (1 - s) / S`` and ``(1 - s) / S`` for each other scanner. The
    draws do not depend on ``s``, so changing it changes only the scanner column.
    """
    n, dev, f64 = label.shape[0], generator.device, torch.float64

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=dev, dtype=f64)

    take_preferred = rand(n) < float(shortcut_strength)
    uniform_scanner = torch.randint(0, num_scanners, (n,), generator=generator, device=dev)
    scanner = torch.where(take_preferred, label % num_scanners, uniform_scanner)
    hospital = torch.randint(0, num_hospitals, (n,), generator=generator, device=dev)
    sp_lo, sp_hi = PIXEL_SPACING_RANGE
    spacing = sp_lo + rand(n) * (sp_hi - sp_lo)
    bmi = (BMI_MEAN_STD[0] + BMI_MEAN_STD[1] * torch.randn(n, generator=generator, device=dev, dtype=f64)).clamp(
        *BMI_RANGE
    )
    return {"scanner": scanner, "hospital": hospital, "pixel_spacing": spacing, "bmi": bmi}


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



def _ramp(signed_distance: Tensor, width: float) -> Tensor:
    """Linear 0 -> 1 edge over ``width`` centred on 0: exactly 0 (black) outside, unlike a sigmoid tail."""
    return (0.5 + signed_distance / width).clamp(0.0, 1.0)


def hospital_marker_masks(num_hospitals: int, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """(num_hospitals, H, W) binary masks of each site's burnt-in marker (hospital code ``k``: ``masks[k]``), as
    :func:`acquire` draws them: the true region an attribution of the hospital should find."""
    m = max(2, round(h / 32))  # at least 2 px so it survives at 64 x 80
    masks = torch.zeros(num_hospitals, h, w, device=device)
    for k in range(num_hospitals):
        fr, fc = _HOSPITAL_MARKERS[k]
        r, c = round(fr * (h - m)), round(fc * (w - m))
        masks[k, r : r + m, c : c + m] = 1.0
    return masks



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
    raise_if(scanner_option_problems(image_size=image_size, num_scanners=num_scanners, num_hospitals=num_hospitals))
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
    markers = hospital_marker_masks(num_hospitals, h, w, dev)[hospital]
    return torch.maximum(img, markers).clamp(0.0, 1.0).unsqueeze(1).contiguous()
