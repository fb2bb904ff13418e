"""Finding image files, hashing their bytes, and decoding them safely.

Decoding never trusts a file: zero bytes, truncation, text named ``.jpg``, decompression bombs,
exotic modes (CMYK, 16-bit, palette with transparency) and EXIF orientation are all handled
here, and every failure becomes an :class:`ImageError` whose message is a reason a person can read.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from embedstore.errors import BadInput
from embedstore.types import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Image-like files we recognise but do not decode: reported as skipped rather than ignored.
UNSUPPORTED_EXTENSIONS = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".svg", ".ico", ".psd", ".raw", ".cr2", ".nef", ".dng"}
)
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(BadInput):
    """A file that cannot be used as an image; ``str(e)`` is the reason shown to the user."""


@dataclass(frozen=True)
class FoundFile:
    """One file under the images folder. ``rel`` is the path relative to the root, POSIX style.

    ``skip`` is why a file with an image name is never opened: it is not a regular file once
    links are resolved (a FIFO, a device).
    """

    path: Path
    rel: str
    size: int
    mtime_ns: int
    supported: bool
    skip: str | None = None


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    # A non-UTF-8 name keeps its raw bytes as \\xNN escapes (Arrow strings are UTF-8): two
    # such names stay two, and disk_path() finds the file again from the stored name.
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_BYTE_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def disk_path(root: str | os.PathLike, rel: str) -> Path:
    """The file a stored relative name (from :func:`find_images`) stands for under ``root``."""
    if "\\x" not in rel:
        return Path(root) / rel
    raw = _BYTE_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), rel.encode("utf-8"))
    return Path(root) / os.fsdecode(raw)


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
            skip = None
            try:
                st = p.stat()  # follows links: what would be opened
                size, mtime = st.st_size, st.st_mtime_ns
                skip = _not_regular(st.st_mode)
            except OSError:  # a broken link, say: reported as unreadable when it is read
                size, mtime = -1, -1
            yield FoundFile(p, _rel(p, root), size, mtime, ext in IMAGE_EXTENSIONS, skip)


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is never opened (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    kind = next((k for is_kind, k in kinds if is_kind(mode)), "a special file")
    return f"not a regular file: {kind} (after resolving links)"


def hash_bytes(data: bytes) -> str:
    """The image id: SHA-256 of the file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (links resolved) of at most ``max_bytes``.

    Opened without blocking and checked on the open file, so a FIFO or a device (``/dev/zero``
    behind a link named ``z.jpg``) is refused at once, never waited on or read without end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except PermissionError as e:
        raise ImageError("unreadable: permission denied") from e
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        why = _not_regular(st.st_mode)
        if why is not None:
            raise ImageError(why)
        if st.st_size > max_bytes:
            raise ImageError(_too_large(st.st_size, max_bytes))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # a file that grew since: still at most max_bytes
        if len(data) > max_bytes:
            raise ImageError(_too_large(len(data), max_bytes))
        return data
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    finally:
        os.close(fd)


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file too large: {size:,} bytes or more is over the limit of {max_bytes:,} "
        "(raise --max-bytes if it is genuine)"
    )


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
            im: Image.Image = Image.open(io.BytesIO(data))
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
