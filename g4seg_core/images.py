"""Reading and writing images and masks, with one-line errors for bad files."""
from __future__ import annotations

import io
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# Registers LABELING_FORMATS' decoders, which an open with `formats=` does not load by itself.
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401,E402

from g4seg_core.errors import ImageError, ImageTooLargeError, UserError

# Decompression bombs: refuse images larger than this many pixels (a setting for callers).
MAX_PIXELS = 64_000_000
# The formats a browser displays, so the ones a labeling tool (Label Studio's image tag, CVAT) can
# show an annotator; servers pass these to `decode_image` so Pillow never runs another decoder
# (EPS would start Ghostscript). Cameras' multi-picture JPEGs (MPO) open through JPEG.
LABELING_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, formats: tuple[str, ...] | None = None,
                 orient: bool = False) -> np.ndarray:
    """Bytes of an image as RGB uint8 HxWx3.

    `formats` limits the decoders tried (None: any Pillow reads). `orient` applies the EXIF
    orientation, as browsers do when they show the image. High bit depths are scaled to 8 bits
    and transparency is composited over white (what a viewer shows), never clipped or dropped.
    """
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(f"the image is {img.width}x{img.height}, over the limit of {max_pixels} pixels")
            img.load()
            if orient:
                img = ImageOps.exif_transpose(img)
            return to_rgb8(img)
    except UnidentifiedImageError:
        known = f"not one of the formats a labeling tool shows ({', '.join(formats)})" if formats \
            else "not a format Pillow can read"
        raise ImageError(f"cannot decode image: {known}") from None
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLargeError(f"the image has {pixels.group(1) if pixels else 'too many'} pixels, over the "
                                 f"limit of {max_pixels}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's plugins raise these for corrupt files
        raise ImageError(f"cannot decode image: {' '.join(str(exc).split())[:200]}") from None


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any Pillow mode as RGB uint8, by scaling (16-bit) and compositing over white (alpha)."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        full = 65535.0 if mode != "F" else max(float(values.max(initial=0.0)), 1.0)
        gray = np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


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


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` can be written: its nearest existing ancestor is a writable folder and `path` itself
    is not a folder. Checked before any slow work; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: no permission to write in {parent}")
    return path


@contextmanager
def atomic_outputs(paths: list[str | os.PathLike]):
    """Yields one temporary path per output; all are renamed onto their outputs only if the block
    succeeds and every temporary file was written, so a run leaves all its outputs or none."""
    temps: list[tuple[str, Path]] = []
    try:
        for path in map(Path, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
            os.close(fd)
            temps.append((tmp, path))
        yield [tmp for tmp, _ in temps]
        for tmp, path in temps:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike):
    """Yields a temporary path beside `path`, renamed onto it only if the block succeeds: a reader
    never sees a half-written file, and a failure leaves nothing behind."""
    with atomic_outputs([path]) as (tmp,):
        yield tmp


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """A uint8 (or uint16) array as a PNG file, written in place (see `atomic_output`)."""
    Image.fromarray(array).save(path, format="PNG")


def save_png_atomic(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG so that a reader never sees a half-written file."""
    with atomic_output(path) as tmp:
        write_png(array, tmp)


def mask_png(mask: np.ndarray) -> np.ndarray:
    """A bool mask as the 0/255 uint8 image masks are written as."""
    return np.where(mask, 255, 0).astype(np.uint8)


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """A bool mask as a 0/255 PNG."""
    save_png_atomic(mask_png(mask), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
