"""The digits world's images: each ``load_digits`` scan (``scans.py``) upscaled and written as PNG files.

Each scan becomes an RGB PNG of ``size`` x ``size`` pixels (bicubic upscaling, dark ink on a white page).

"Another view of the same subject" (``image_rephrase``) is the same scan seen through a small deterministic
geometric transform: a rotation of +-10..15 degrees, a scale of 0.85..1.0 and a shift of at most one source
pixel, drawn per image from a seeded generator. The digit, writer and stroke are unchanged, so every
question about the image has the same answer on both views, yet the pixels differ (the model cannot match
the view by memorised pixels). Pretraining shows the model train scans through fresh views of the same
family (``digits.pretrain.random_views``), never the eval scans or their views.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

LOG = logging.getLogger(__name__)


def _to_page(scan: np.ndarray) -> Image.Image:
    """8x8 ink array -> 8x8 greyscale image with dark ink on white."""
    return Image.fromarray(np.uint8(np.round(255.0 * (1.0 - scan))), mode="L")


def render(scan: np.ndarray, size: int) -> Image.Image:
    """The canonical view: the scan upscaled to ``size`` x ``size`` RGB."""
    return _to_page(scan).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def view_transform(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw the other view's (angle in degrees, scale, shift x, shift y in source pixels)."""
    angle = float(rng.uniform(10.0, 15.0) * rng.choice([-1.0, 1.0]))
    scale = float(rng.uniform(0.85, 1.0))
    shift_x, shift_y = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))
    return angle, scale, shift_x, shift_y


def render_view(scan: np.ndarray, size: int, transform: tuple[float, float, float, float]) -> Image.Image:
    """The other view: the upscaled scan rotated, scaled and shifted about its centre (white fill)."""
    angle, scale, shift_x, shift_y = transform
    big = _to_page(scan).resize((size, size), Image.Resampling.BICUBIC)
    pixel = size / 8.0  # one source pixel in output pixels
    # PIL's affine maps output -> input coordinates: invert rotation+scale about the centre, then shift.
    theta = math.radians(angle)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    centre = size / 2.0
    a, b = cos, sin
    d, e = -sin, cos
    c = centre - a * centre - b * centre - shift_x * pixel
    f = centre - d * centre - e * centre - shift_y * pixel
    moved = big.transform(
        (size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BICUBIC, fillcolor=255
    )
    return moved.convert("RGB")


def write_images(
    scans: np.ndarray, indices: list[int], folder: Path, size: int, seed: int
) -> dict[int, tuple[str, str]]:
    """Write the canonical view and the other view of each scan as PNG.

    Args:
        scans: all scans, (N, 8, 8).
        indices: which scans to write.
        folder: the image root (``coco_image`` / ``rephrase_image`` in the hparams).
        size: output side in pixels.
        seed: seeds each view's transform (with the scan index), so files are reproducible.

    Returns:
        scan index -> (image path, view path), both relative to ``folder``.
    """
    (folder / "digits").mkdir(parents=True, exist_ok=True)
    (folder / "views").mkdir(parents=True, exist_ok=True)
    paths = {}
    for index in indices:
        rng = np.random.default_rng([seed, index])
        image_path, view_path = f"digits/{index:04d}.png", f"views/{index:04d}.png"
        render(scans[index], size).save(folder / image_path)
        render_view(scans[index], size, view_transform(rng)).save(folder / view_path)
        paths[index] = (image_path, view_path)
    LOG.debug("wrote %d images and their views under %s", len(indices), folder)
    return paths
