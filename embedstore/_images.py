"""Finding image files, hashing their bytes, and decoding them safely.

Decoding never trusts a file: zero bytes, truncation, text named ``.jpg``, decompression bombs,
exotic modes (CMYK, 16-bit, palette with transparency) and EXIF orientation are all handled
here, and every failure becomes an :class:`ImageError` whose message is a reason a person can read.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Image-like files we recognise but do not decode: reported as skipped rather than ignored.
UNSUPPORTED_EXTENSIONS = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".svg", ".ico", ".psd", ".raw", ".cr2", ".nef", ".dng"}
)
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit (~ 0.25 GB of RGB)

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A file that cannot be used as an image; ``str(e)`` is the reason shown to the user."""


@dataclass(frozen=True)
class FoundFile:
    """One file under the images folder. ``rel`` is the path relative to the root, POSIX style."""

    path: Path
    rel: str
    size: int
    mtime_ns: int
    supported: bool


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    # Non-UTF-8 names come back with surrogate escapes; keep them representable in Arrow strings.
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def find_images(root: str | os.PathLike) -> Iterator[FoundFile]:
    """Yield image files under ``root`` recursively, sorted, any extension case.

    Files with an image-like but unsupported extension (gif, heic, ...) are yielded with
    ``supported=False`` so the caller can record them as skipped. Hidden files and folders are
    ignored, and so is everything else (CSV, text, ...).
    """
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext not in IMAGE_EXTENSIONS and ext not in UNSUPPORTED_EXTENSIONS:
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # a broken link, say: reported as unreadable when it is read
                size, mtime = -1, -1
            yield FoundFile(p, _rel(p, root), size, mtime, ext in IMAGE_EXTENSIONS)


def hash_bytes(data: bytes) -> str:
    """The image id: SHA-256 of the file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError as e:
        raise ImageError("unreadable: permission denied") from e
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into an 8-bit RGB PIL image, upright per its EXIF orientation.

    Raises :class:`ImageError` with a reason for anything that is not a decodable image.
    """
    import io

    if not data:
        raise ImageError("empty file (0 bytes)")
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(
                    f"image too large: {w}x{h} px is over the limit of {max_pixels:,} px "
                    "(possible decompression bomb; raise max_pixels if it is genuine)"
                )
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large (possible decompression bomb): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("not an image (content is not a recognised image format)") from e
    except OSError as e:
        msg = str(e)
        if "truncated" in msg:
            raise ImageError("truncated image (file ends early)") from e
        raise ImageError(f"cannot decode: {msg}") from e
    except (ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(f"cannot decode: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not lose an otherwise good image
        pass
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16-bit and float rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") else float(max(a.max(), 1.0))
        if im.mode == "I" and a.max() <= 255:
            hi = 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
