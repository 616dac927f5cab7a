"""The EasyEdit glue: everything that touches easyeditor.

Registration in EasyEdit's tables, the EasyEdit-style hparams, the ``ALG_MULTIMODAL_DICT`` entry, the
``MultimodalTrainer`` subclass, EasyEdit main's editor API on the wheel, scoring with EasyEdit's metric code, and
the compatibility fixes. The import fixes run first, before anything below imports easyeditor.
"""

from .compat import imports

imports.apply()

from .editable import LiveEdit  # noqa: E402
from .editor_api import MultimodalEditor  # noqa: E402
from .entry import apply_liveedit_to_multimodal_model, attached_editor, editor_for  # noqa: E402
from .hparams import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams  # noqa: E402
from .registration import register  # noqa: E402
from .trainer import LiveEditMultimodalTrainer  # noqa: E402

__all__ = [
    "LiveEdit",
    "LiveEditMultimodalHparams",
    "LiveEditMultimodalTrainer",
    "LiveEditMultimodalTrainingHparams",
    "MultimodalEditor",
    "apply_liveedit_to_multimodal_model",
    "attached_editor",
    "editor_for",
    "register",
]
