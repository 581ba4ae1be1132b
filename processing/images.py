"""Safe image loading for datasets: paths confined to an image root, every pixel format turned into 8-bit RGB,
and clear errors for missing, corrupt, truncated or oversized files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


# Pillow's own guard: it warns above this many pixels and refuses twice as many. We refuse above it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageLoadError(ValueError):
    """An image of a dataset cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind  # "bad_image_path" | "unsafe_image_path" | "missing_image" | "unreadable_image"


# Longest file name (one path component) and whole path, in bytes, that POSIX systems accept (NAME_MAX, PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def shown_path(path: object, limit: int = 120) -> str:
    """A path as a report line can show it: `repr` when it holds control characters (a NUL byte), cut when long."""
    text = str(path) if isinstance(path, str) and path.isprintable() else repr(path)
    return text if len(text) <= limit else f"{text[: limit - 30]}...{text[-25:]} ({len(text)} characters)"


def image_path_problem(relative_path: object) -> str | None:
    """Why `relative_path` cannot name a file at all (checked without touching the disk), or `None`.

    These are the paths on which `os` and `pathlib` raise instead of answering (`ValueError: embedded null byte`,
    `OSError: File name too long`, `UnicodeEncodeError`): they are refused here so that no check downstream throws.
    """
    if not isinstance(relative_path, str) or not relative_path:
        return "the image path is empty or not a string"
    if "\x00" in relative_path:
        return "the image path contains a NUL byte"
    try:
        encoded = os.fsencode(relative_path)
    except UnicodeError:
        return "the image path is not valid Unicode (it holds a lone surrogate)"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > MAX_NAME_BYTES:
        return f"a file name in the image path is {longest} bytes long, more than the {MAX_NAME_BYTES} a file system allows"
    if len(encoded) > MAX_PATH_BYTES:
        return f"the image path is {len(encoded)} bytes long, more than the {MAX_PATH_BYTES} a file system allows"
    return None


def resolve_image_path(image_root: str | os.PathLike, relative_path: str) -> Path:
    """`image_root / relative_path`, refusing absolute paths and any path (`..`, symlinks) leading outside the root.

    Raises `ImageLoadError` (never `OSError`, `ValueError` or `RuntimeError`) for any path that cannot be used:
    malformed (`bad_image_path`: NUL byte, over-long, a symlink loop) or leaving the root (`unsafe_image_path`).
    """
    root = Path(image_root).resolve()
    problem = image_path_problem(relative_path)
    if problem is not None:
        raise ImageLoadError(shown_path(relative_path), problem, "bad_image_path")
    if Path(relative_path).is_absolute():
        raise ImageLoadError(relative_path, f"absolute image paths are not allowed (image root {root})", "unsafe_image_path")
    joined = root / relative_path
    if len(os.fsencode(str(joined))) > MAX_PATH_BYTES:
        raise ImageLoadError(shown_path(relative_path), f"the path under the image root is longer than {MAX_PATH_BYTES} bytes", "bad_image_path")
    try:
        resolved = joined.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: Python < 3.13 reports a symlink loop this way
        reason = "a symlink loop" if "loop" in str(error).lower() else f"the path cannot be resolved ({error})"
        raise ImageLoadError(shown_path(relative_path), reason, "bad_image_path") from None
    if not resolved.is_relative_to(root):
        raise ImageLoadError(shown_path(relative_path), f"the path leads outside the image root {root}", "unsafe_image_path")
    return resolved


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing the picture.

    Pillow's `convert("RGB")` clips 16/32-bit grey values at 255 (a 16-bit scan becomes almost white), and it drops
    alpha, leaving transparent pixels with whatever colour they hide; both are handled here.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the image file at `path` completely and return it as 8-bit RGB.

    Raises:
        ImageLoadError: the file is missing, not an image, truncated or corrupt, or has more than `max_pixels`
            pixels (a decompression bomb: a small file that would expand to gigabytes).
    """
    path = Path(path)
    if not _is_file(path):
        raise ImageLoadError(path, "no such image file", "missing_image")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error like the rest.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        path,
                        f"the image is {width}x{height} = {width * height} pixels, more than the limit of "
                        f"{max_pixels} (a possible decompression bomb)",
                        "unreadable_image",
                    )
                image.load()
                rgb = _to_rgb(image)
                # Leaving the `with` closes `image` and frees its pixels: return an independent copy.
                return rgb.copy() if rgb is image else rgb
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"refused as a possible decompression bomb: {error}", "unreadable_image") from None
    except PermissionError:
        raise ImageLoadError(path, "the image file cannot be read (permission denied)", "unreadable_image") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a readable image file (unknown format or corrupt header)", "unreadable_image") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated or corrupt pixel data as OSError ("image file is truncated") or SyntaxError.
        raise ImageLoadError(path, f"corrupt or truncated image data: {error}", "unreadable_image") from None


def _is_file(path: Path) -> bool:
    """`Path.is_file`, answering `False` where it would raise (a path the OS refuses to look up)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def image_file_exists(image_root: str | os.PathLike, relative_path: str) -> bool:
    """Whether `relative_path` names a file inside `image_root`; raises `ImageLoadError` as `resolve_image_path`."""
    return _is_file(resolve_image_path(image_root, relative_path))


def load_image(image_root: str | os.PathLike, relative_path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load `relative_path` under `image_root` safely as RGB (see `resolve_image_path` and `open_image`)."""
    return open_image(resolve_image_path(image_root, relative_path), max_pixels=max_pixels)


class LazyImageLoader:
    """A `datasets` transform that replaces the `images` column's relative paths by loaded RGB images.

    It is a small class rather than a closure so that it pickles into DataLoader worker processes.
    """

    def __init__(self, image_root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, column: str = "images"):
        self.image_root = str(image_root)
        self.max_pixels = max_pixels
        self.column = column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        batch[self.column] = [
            [load_image(self.image_root, path, self.max_pixels) for path in paths] for paths in batch[self.column]
        ]
        return batch


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "LazyImageLoader",
    "image_file_exists",
    "image_path_problem",
    "load_image",
    "open_image",
    "resolve_image_path",
]
