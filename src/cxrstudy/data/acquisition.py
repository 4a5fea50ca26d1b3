"""How a phantom site's equipment turns a drawn chest into an 8-bit radiograph: exposure, illumination, sensor noise,
and what the scanner burns into the image. Two sites differ here, and only here, besides their detector size and
their patients: the findings' signatures are drawn by the same code (`cxrstudy.data.phantom`), so a model that moves
between sites meets a real, measurable acquisition shift, as Zech et al. (PLOS Medicine 2018) found between
hospitals, not different diseases.

Per image, a gain, an offset and a gamma are drawn from the site's ranges, and the illumination tilts at a random
angle: grey level = clip(offset + gain * (chest + illumination + noise), 0, 1) ** gamma, quantised to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrstudy.data.imageio import ImageError, encode_png


@dataclass(frozen=True)
class Acquisition:
    """One site's acquisition. Ranges are (low, high) of a uniform draw per image."""

    gain: tuple[float, float]
    offset: tuple[float, float]
    gamma: tuple[float, float]
    illumination: float  # the strength of the illumination gradient across the image
    noise: float  # sensor noise, standard deviation before the gain
    marker: str = ""  # text the scanner burns into the top right corner at full white; "" = none
    jpeg_quality: int = 0  # stored as JPEG at this quality (1..100), as CheXpert's images are; 0 = PNG, as NIH's


# Site A (NIH-shaped): deliberately poor exposure, a narrow grey range, so that local contrast enhancement matters.
SITE_A = Acquisition(gain=(0.28, 0.4), offset=(0.3, 0.45), gamma=(0.85, 1.2), illumination=0.09, noise=0.004)
# Site B (CheXpert-shaped): another detector: darker and harder (a higher gamma), a flatter field, five times the
# sensor noise, a burned-in laterality marker in the corner, as real scanners leave, and JPEG files.
SITE_B = Acquisition(gain=(0.3, 0.42), offset=(0.25, 0.37), gamma=(0.95, 1.25), illumination=0.06, noise=0.008,
                     marker="L", jpeg_quality=90)


def expose(scene: np.ndarray, rng: np.random.Generator, acquisition: Acquisition) -> np.ndarray:
    """The drawn chest (float32, about 0..1) as the site's 8-bit radiograph; draws from `rng` in a fixed order."""
    s = scene.shape[0]
    a = acquisition
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    illumination = a.illumination * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    img = scene + illumination + a.noise * rng.standard_normal(scene.shape).astype(np.float32)
    gain = rng.uniform(*a.gain)
    offset = rng.uniform(*a.offset)
    out = np.clip(offset + gain * img, 0, 1) ** rng.uniform(*a.gamma)
    image = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    if a.marker:
        burn_marker(image, a.marker, rng)
    return image


def burn_marker(image: np.ndarray, text: str, rng: np.random.Generator) -> None:
    """Burn `text` at full white into the top right corner of `image` (its height about 6 % of the image's), a few
    pixels from where it was last time, as a lead marker placed by hand is."""
    s = image.shape[0]
    scale = s * 0.06 / 22.0  # FONT_HERSHEY_SIMPLEX is about 22 px tall at scale 1
    thickness = max(1, round(s / 100))
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = round(s - width - s * rng.uniform(0.03, 0.06))
    y = round(height + s * rng.uniform(0.03, 0.06))
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)


def marker_box(size: int) -> tuple[slice, slice]:
    """Rows and columns of the corner where `burn_marker` puts the marker in a `size`-px image (whatever its jitter)."""
    return slice(0, round(size * 0.15)), slice(size - round(size * 0.2), size)


def encode(image: np.ndarray, acquisition: Acquisition, name: str = "image") -> bytes:
    """The image as the site stores it: PNG (fast compression), or JPEG at the site's quality (libjpeg's integer DCT,
    the same bytes on every machine)."""
    if not acquisition.jpeg_quality:
        return encode_png(image, name=name)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, acquisition.jpeg_quality])
    if not ok:
        raise ImageError(f"{name}: JPEG encoding failed")
    return buf.tobytes()
