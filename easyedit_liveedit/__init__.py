"""LiveEdit (CVPR 2025) as an EasyEdit plugin: ``import easyedit_liveedit`` registers it.

After the import, EasyEdit's ``MultimodalEditor`` accepts ``alg_name: LiveEdit`` and EasyEdit's trainer loop
accepts ``alg: LiveEdit``; nothing of EasyEdit's own editors changes. Three layers: ``liveedit`` (the method,
without EasyEdit), ``easyedit`` (the glue) and ``bench`` (the experiment harness); see README.md.
"""

from .easyedit import (
    LiveEdit,
    LiveEditMultimodalHparams,
    LiveEditMultimodalTrainer,
    LiveEditMultimodalTrainingHparams,
    MultimodalEditor,
    register,
)
from .liveedit import LiveEditConfig, LiveEditModel

register()

__all__ = [
    "LiveEdit",
    "LiveEditConfig",
    "LiveEditModel",
    "LiveEditMultimodalHparams",
    "LiveEditMultimodalTrainer",
    "LiveEditMultimodalTrainingHparams",
    "MultimodalEditor",
    "register",
]
__version__ = "0.1.0"
