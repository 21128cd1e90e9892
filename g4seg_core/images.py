"""Reading and writing images and masks, with one-line errors for bad files."""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from g4seg_core.errors import ImageError

# Decompression bombs: refuse images larger than this many pixels (a setting for callers).
MAX_PIXELS = 64_000_000


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of any PIL-readable image as RGB uint8 HxWx3."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"image is {img.width}x{img.height}, over the limit of {max_pixels} pixels")
            img.load()
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageError("cannot decode image: not a format Pillow can read") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        return decode_image(path.read_bytes(), max_pixels)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask PNG as bool HxW (any non-zero pixel is foreground)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"mask not found: {path}")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"cannot decode mask {path}: {exc}") from None
    return arr > 0


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Yields a temporary path beside `path`; renamed onto it only if the block succeeds.

    A reader never sees a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix or path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def save_png_atomic(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG so that a reader never sees a half-written file."""
    with atomic_output(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """A bool mask as a 0/255 PNG."""
    save_png_atomic(np.where(mask, 255, 0).astype(np.uint8), path)
