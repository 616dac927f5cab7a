"""The pre-filter a ``LiveEditConfig`` asks for: its ``index`` key (``exact`` or ``faiss``) and ``index_*`` parameters.

``index: exact`` (the default) attaches nothing: the library scans every key. ``index: faiss`` attaches a
``FaissPrefilter`` built from the ``index_*`` fields, consulted from ``index_min_experts`` experts on. Neither changes
an expert or the networks, so an archive trained under one loads under the other.
"""

from __future__ import annotations

import importlib.util

from ..liveedit import ExpertLibrary, LiveEditConfig
from .faiss_prefilter import FaissPrefilter

INSTALL = "pip install faiss-cpu (or: pip install 'easyedit-liveedit[index]')"


def check_index(config: LiveEditConfig, where: str) -> None:
    """Refuse ``index: faiss`` where faiss is not installed, before anything is built.

    Raises:
        ValueError: naming ``where`` (the hparams file), the key and how to install faiss.
    """
    if config.index == "faiss" and importlib.util.find_spec("faiss") is None:
        raise ValueError(f"{where}: key 'index' is 'faiss', but faiss is not installed; {INSTALL}; or index: exact")


def configure_index(library: ExpertLibrary, config: LiveEditConfig, where: str) -> None:
    """Attach to ``library`` the pre-filter ``config`` asks for (``exact``: none), filled with its experts."""
    check_index(config, where)
    if config.index == "exact":
        return
    prefilter = FaissPrefilter(
        nlist=config.index_nlist,
        nprobe=config.index_nprobe,
        codes=config.index_codes,
        train_size=config.index_train_size,
        margin=config.index_margin,
        threads=config.index_threads,
    )
    library.set_prefilter(prefilter, min_experts=config.index_min_experts)
