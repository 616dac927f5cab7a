"""Optional approximate indexes for the expert library (``liveedit.library.Prefilter``), outside the method layer.

The method layer imports only torch; an index library is an optional dependency, so its adapter lives here and is
handed to ``ExpertLibrary.set_prefilter``, by hand or from the config's ``index`` key (``configure_index``).
``FaissPrefilter`` needs ``pip install faiss-cpu`` (imported when one is built, never on ``import easyedit_liveedit``).
"""

from .configured import check_index, configure_index
from .faiss_prefilter import FaissPrefilter

__all__ = ["FaissPrefilter", "check_index", "configure_index"]
