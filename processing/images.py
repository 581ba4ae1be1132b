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
        self.kind = kind  # "unsafe_image_path" | "missing_image" | "unreadable_image"


def resolve_image_path(image_root: str | os.PathLike, relative_path: str) -> Path:
    """`image_root / relative_path`, refusing absolute paths and any path (`..`, symlinks) leading outside the root."""
    root = Path(image_root).resolve()
    if not isinstance(relative_path, str) or not relative_path:
        raise ImageLoadError(relative_path, "the image path is empty or not a string", "unsafe_image_path")
    if Path(relative_path).is_absolute():
        raise ImageLoadError(relative_path, f"absolute image paths are not allowed (image root {root})", "unsafe_image_path")
    resolved = (root / relative_path).resolve()
    if not resolved.is_relative_to(root):
        raise ImageLoadError(relative_path, f"the path leads outside the image root {root}", "unsafe_image_path")
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
    if not path.is_file():
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
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a readable image file (unknown format or corrupt header)", "unreadable_image") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated or corrupt pixel data as OSError ("image file is truncated") or SyntaxError.
        raise ImageLoadError(path, f"corrupt or truncated image data: {error}", "unreadable_image") from None


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
    "load_image",
    "open_image",
    "resolve_image_path",
]
