"""LiveEdit (CVPR 2025) as an EasyEdit plugin: ``import easyedit_liveedit`` registers it.

After the import, EasyEdit's ``MultimodalEditor`` accepts ``alg_name: LiveEdit`` and EasyEdit's trainer loop
accepts ``alg: LiveEdit``; see README.md.
"""

from .registration import register

register()

from .liveedit_hparams import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams  # noqa: E402

__all__ = ["LiveEditMultimodalHparams", "LiveEditMultimodalTrainingHparams", "register"]
__version__ = "0.1.0"
