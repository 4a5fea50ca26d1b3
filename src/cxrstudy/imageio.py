"""Reading chest X-ray PNGs as they really are, into one 8-bit channel.

Rules (stated once, applied everywhere):
- grey images pass through; LA / RGB / RGBA images are reduced to their luminance (alpha is dropped);
- 16-bit images are reduced to 8 bits by keeping the high byte (`value >> 8`), i.e. a linear rescale of 0..65535
  onto 0..255 with no windowing;
- anything OpenCV cannot decode (empty, truncated, not a PNG) raises `ImageError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


class ImageError(Exception):
    """An image that cannot be used; the message names the file and the reason."""


def to_gray8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Reduce a decoded image (H×W, H×W×2/3/4; uint8 or uint16) to one uint8 channel."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:  # grey + alpha
        return np.ascontiguousarray(image[:, :, 0])
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ImageError(f"{name}: unsupported channel count {channels}")


def decode_gray(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG bytes into one uint8 channel, rejecting empty, truncated or non-PNG data."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError(f"{name}: not a PNG (bad signature)")
    # libpng decodes many truncated files with a warning; the missing IEND chunk catches them.
    if PNG_END not in data[-64:]:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk at the end)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: corrupt PNG (OpenCV could not decode it)")
    return to_gray8(image, name)


def read_gray(path: Path) -> np.ndarray:
    """Read a PNG file into one uint8 channel; `ImageError` names the file when it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: missing image file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from None
    return decode_gray(data, str(path))


def write_png(path: Path, image: np.ndarray, compression: int = 1) -> None:
    """Write a uint8 image as PNG (fast compression by default)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ImageError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(buf.tobytes())
