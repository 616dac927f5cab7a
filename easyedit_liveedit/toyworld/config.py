"""What every world configuration shares: a fingerprint that names its cache entry, and field checks.

Each world has its own configuration dataclass (``digits.config.ToyWorldConfig``, ``scenes.config.SceneWorldConfig``),
a frozen dataclass of sizes, model widths and pretraining schedule that derives from ``WorldConfig``. A built world
is reused only while its configuration's fingerprint is unchanged (``world.build``), and shipped artifacts are used
only for the fingerprint they were built from (``artifacts.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json


class WorldConfig:
    """Base of a world's configuration dataclass: the fingerprint and the checks every field gets.

    Model fields every world has (read by ``backbone.write_fresh_backbone``): ``seed``, ``image_size``,
    ``patch_size``, ``vit_*``, ``qformer_*``, ``num_query_tokens``, ``opt_*``; and ``threads``, ``name``.
    """

    def fingerprint(self) -> str:
        """A short hash of every field (names and values, not the class), so moving a class keeps it."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def check_fields(self) -> None:
        """Every int field a non-negative int, every float field a non-negative number (names the field)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{type(self).__name__}.{field.name}: expected a non-negative int, got {value!r}")
            if field.type == "float" and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"{type(self).__name__}.{field.name}: expected a non-negative number, got {value!r}")
