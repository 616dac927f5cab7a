"""LiveEdit, the method: importable and testable without EasyEdit.

``LiveEditModel`` holds a frozen backbone, LiveEdit's networks and an expert library; ``LiveEditConfig`` sizes
them; a ``BackboneAdapter`` (``easyedit_liveedit.backbones``) tells it where a backbone's layers and tokens are.
"""

from .backbone import BackboneAdapter, TokenLayout
from .config import LiveEditConfig
from .library import ExpertLibrary, Prefilter, Routing
from .model import LiveEditModel
from .networks import Experts, InputKeys, LiveEditNetwork
from .storage import LibraryFileError

__all__ = [
    "BackboneAdapter",
    "Experts",
    "ExpertLibrary",
    "InputKeys",
    "LibraryFileError",
    "LiveEditConfig",
    "LiveEditModel",
    "LiveEditNetwork",
    "Prefilter",
    "Routing",
    "TokenLayout",
]
