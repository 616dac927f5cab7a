"""LiveEdit (CVPR 2025) as an EasyEdit plugin: ``import easyedit_liveedit`` registers it.

After the import, EasyEdit's ``MultimodalEditor`` accepts ``alg_name: LiveEdit`` and EasyEdit's trainer loop
accepts ``alg: LiveEdit``; see README.md.
"""

from .registration import register

register()

from .editor import LiveEdit  # noqa: E402
from .liveedit_hparams import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams  # noqa: E402
from .multimodal_editor import MultimodalEditor  # noqa: E402
from .trainer import LiveEditMultimodalTrainer  # noqa: E402

__all__ = [
    "LiveEdit",
    "LiveEditMultimodalHparams",
    "LiveEditMultimodalTrainer",
    "LiveEditMultimodalTrainingHparams",
    "MultimodalEditor",
    "register",
]
__version__ = "0.1.0"
