"""Scenes: 2x2 composites of real ``load_digits`` scans, the subjects of the scenes world.

A *scene* is content: four digits in the cells top left, top right, bottom left, bottom right, each written in
one of six ink colours, on one of four paper colours. A *subject* is one scene; it is rendered twice from the
scans of its split's pool: ``image`` (the canonical rendering) and ``image_rephrase`` (another rendering of
the same content: other scans of the same four digits, another size and placement in each cell). Every
question the world asks is a function of the content, so both renderings have the same answers while their
pixels differ, which is what E-VQA's ``image_rephrase`` (M-Generality) asks of a subject.

Why this shape (the single-scan world could not support routing): a router must tell subjects apart, and two
scans of one digit are alike to any image encoder that reads digits. A scene's content has 10^4 * 6^4 * 4
values, so every eval subject can have its own content, and contents are drawn at least ``min_distance``
attributes apart (of the nine: four digits, four inks, the paper), so one misread attribute never makes
another subject's content the nearest.

Geometry: a cell is ``image_size / 2`` pixels square; a scan (8x8 grey levels) is upscaled bicubically to
one of ``digit_sizes`` and placed at a random offset inside its cell, at least ``margin`` pixels from the
cell's edge, so with the patch size a divisor of the cell each ViT patch sees one cell only. Ink is composited
onto the paper with the scan's grey level as opacity: ``pixel = paper * (1 - ink) + colour * ink``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LOG = logging.getLogger(__name__)

POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell index 0..3, row-major
# Saturated inks that stay readable on every paper (orange on yellow is the weakest pair: still 90 grey levels
# apart in the blue channel).
INKS = {
    "red": (210, 30, 30),
    "green": (20, 140, 40),
    "blue": (30, 60, 220),
    "black": (15, 15, 15),
    "purple": (140, 40, 170),
    "orange": (235, 130, 0),
}
PAPERS = {
    "white": (255, 255, 255),
    "yellow": (250, 238, 150),
    "grey": (190, 190, 190),
    "pink": (250, 200, 215),
}
INK_NAMES = tuple(INKS)
PAPER_NAMES = tuple(PAPERS)
N_ATTRIBUTES = 9  # four digits, four inks, one paper


@dataclass(frozen=True)
class Scene:
    """The content of a subject: what every question is about (the rendering is not content)."""

    digits: tuple[int, int, int, int]  # per cell, 0-9
    inks: tuple[int, int, int, int]  # per cell, index into INK_NAMES
    paper: int  # index into PAPER_NAMES

    def __post_init__(self) -> None:
        if len(self.digits) != 4 or len(self.inks) != 4:
            raise ValueError(f"Scene: expected four digits and four inks, got {self.digits}, {self.inks}")
        if not all(0 <= d <= 9 for d in self.digits):
            raise ValueError(f"Scene.digits: expected 0-9, got {self.digits}")
        if not all(0 <= k < len(INKS) for k in self.inks) or not 0 <= self.paper < len(PAPERS):
            raise ValueError(f"Scene: ink or paper out of range ({self.inks}, {self.paper})")

    def attributes(self) -> tuple[int, ...]:
        """The nine attributes whose Hamming distance separates subjects."""
        return self.digits + self.inks + (self.paper,)

    def to_json(self) -> dict:
        """Readable content for the records: digits, ink names, paper name."""
        return {
            "digits": list(self.digits),
            "inks": [INK_NAMES[k] for k in self.inks],
            "paper": PAPER_NAMES[self.paper],
        }

    @classmethod
    def from_json(cls, value: dict) -> Scene:
        return cls(
            tuple(int(d) for d in value["digits"]),
            tuple(INK_NAMES.index(k) for k in value["inks"]),
            PAPER_NAMES.index(value["paper"]),
        )


def sample_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene: digits and inks drawn with replacement per cell, and a paper."""
    return Scene(
        tuple(int(v) for v in rng.integers(0, 10, 4)),
        tuple(int(v) for v in rng.integers(0, len(INKS), 4)),
        int(rng.integers(len(PAPERS))),
    )


def distinct_scenes(n: int, rng: np.random.Generator, min_distance: int, taken: Sequence[Scene] = ()) -> list[Scene]:
    """``n`` random scenes, each at least ``min_distance`` attributes away from each other and from ``taken``.

    Rejection sampling; with 2,000-3,000 scenes and a distance of 3 among 10^4 * 6^4 * 4 contents almost every
    draw is accepted.

    Raises:
        ValueError: if 100 * n draws in a row do not find enough scenes (distance too large for n).
    """
    chosen: list[Scene] = []
    table = np.zeros((len(taken) + n, N_ATTRIBUTES), dtype=np.int8)  # rows [0, filled) are placed scenes
    for row, scene in enumerate(taken):
        table[row] = scene.attributes()
    filled, misses = len(taken), 0
    while len(chosen) < n:
        scene = sample_scene(rng)
        row = np.array(scene.attributes(), dtype=np.int8)
        if filled and int((table[:filled] != row).sum(axis=1).min()) < min_distance:
            misses += 1
            if misses > 100 * n:
                raise ValueError(f"distinct_scenes: cannot place {n} scenes at distance {min_distance}")
            continue
        chosen.append(scene)
        table[filled] = row
        filled += 1
    return chosen


class ScanPool:
    """The scans of one split, grouped by digit (a rendering draws each cell's scan from its digit's group)."""

    def __init__(self, indices: Sequence[int], labels: np.ndarray) -> None:
        self.by_digit: dict[int, list[int]] = {d: [] for d in range(10)}
        for index in sorted(indices):
            self.by_digit[int(labels[index])].append(int(index))
        empty = [d for d, group in self.by_digit.items() if len(group) < 2]
        if empty:
            raise ValueError(f"ScanPool: digits {empty} have fewer than two scans (a rephrase needs another scan)")

    def choose(
        self, scene: Scene, rng: np.random.Generator, avoid: Sequence[int] | None = None
    ) -> tuple[int, int, int, int]:
        """One scan per cell showing that cell's digit; never the scan in ``avoid`` at the same cell."""
        out = []
        for cell, digit in enumerate(scene.digits):
            group = self.by_digit[digit]
            if avoid is not None:
                group = [s for s in group if s != avoid[cell]]
            out.append(group[int(rng.integers(len(group)))])
        return tuple(out)  # type: ignore[return-value]


class SceneRenderer:
    """Renders a scene from four scans as an RGB uint8 array of ``image_size`` pixels (the PNG's exact pixels).

    The PNG is written at the processor's size, so ``BlipImageEvalProcessor``'s resize is the identity and
    pretraining, which renders in memory with the same code, sees exactly the tensors EasyEdit will load.
    """

    def __init__(self, scans: np.ndarray, image_size: int, digit_sizes: Sequence[int], margin: int) -> None:
        self.scans = scans  # (N, 8, 8), ink in [0, 1]
        self.image_size = image_size
        self.cell = image_size // 2
        self.digit_sizes = tuple(digit_sizes)
        self.margin = margin
        if max(self.digit_sizes) + 2 * margin > self.cell:
            raise ValueError(f"digit_sizes {self.digit_sizes} with margin {margin} do not fit a {self.cell}px cell")
        self._ink: dict[tuple[int, int], np.ndarray] = {}

    def ink(self, scan: int, size: int) -> np.ndarray:
        """The scan's ink upscaled (bicubic, as the digits world's PNGs) to ``size`` pixels, in [0, 1]."""
        key = (scan, size)
        if key not in self._ink:
            grey = Image.fromarray(np.uint8(np.round(255.0 * self.scans[scan])), mode="L")
            big = grey.resize((size, size), Image.Resampling.BICUBIC)
            self._ink[key] = np.asarray(big, dtype=np.float32)[..., None] / 255.0  # (size, size, 1)
        return self._ink[key]

    def render(self, scene: Scene, scans: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """(S, S, 3) uint8: paper everywhere, each cell's scan at a random size and offset in its ink."""
        paper = np.array(PAPERS[PAPER_NAMES[scene.paper]], dtype=np.float32)
        out = np.empty((self.image_size, self.image_size, 3), dtype=np.float32)
        out[:] = paper
        for cell in range(4):
            size = self.digit_sizes[int(rng.integers(len(self.digit_sizes)))]
            room = self.cell - size - 2 * self.margin
            dx, dy = (int(v) + self.margin for v in rng.integers(0, room + 1, size=2))
            top, left = (cell // 2) * self.cell + dy, (cell % 2) * self.cell + dx
            ink = self.ink(scans[cell], size)
            colour = np.array(INKS[INK_NAMES[scene.inks[cell]]], dtype=np.float32)
            out[top : top + size, left : left + size] = paper * (1.0 - ink) + colour * ink
        return np.uint8(np.clip(np.round(out), 0, 255))


@dataclass(frozen=True)
class Subject:
    """One subject as written: its id, content, the scans of both renderings and their image paths."""

    id: str
    scene: Scene
    scans: tuple[int, int, int, int]
    rephrase_scans: tuple[int, int, int, int]
    image: str
    image_rephrase: str


def write_subjects(
    prefix: str, scenes: Sequence[Scene], pool: ScanPool, renderer: SceneRenderer, folder: Path, seed: int
) -> list[Subject]:
    """Render and write both renderings of each scene; returns the subjects in order.

    Args:
        prefix: names the subjects and their files (``<prefix>-00042``), e.g. ``eval``.
        scenes: the contents.
        pool: the split's scans (both renderings draw from it; the rephrase never reuses a cell's scan).
        renderer: the renderer (its size is the PNG's size).
        folder: the image root (``coco_image`` = ``rephrase_image`` in the hparams).
        seed: with the prefix's and the subject's index, seeds the scans and placements, so files are reproducible.
    """
    (folder / "scenes").mkdir(parents=True, exist_ok=True)
    (folder / "views").mkdir(parents=True, exist_ok=True)
    salt = int.from_bytes(prefix.encode()[:8].ljust(8, b"\0"), "little")
    subjects = []
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, salt, i])
        scans = pool.choose(scene, rng)
        others = pool.choose(scene, rng, avoid=scans)
        name = f"{prefix}-{i:05d}"
        image, view = f"scenes/{name}.png", f"views/{name}.png"
        Image.fromarray(renderer.render(scene, scans, rng)).save(folder / image)
        Image.fromarray(renderer.render(scene, others, rng)).save(folder / view)
        subjects.append(Subject(name, scene, scans, others, image, view))
    LOG.debug("wrote %d %s subjects (two renderings each) under %s", len(subjects), prefix, folder)
    return subjects
