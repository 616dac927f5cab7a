"""The command line hides known third-party noise, and only that; ``run.verbose=true`` shows everything."""

import logging

import pytest
from transformers.utils import logging as transformers_logging

from easyedit_liveedit.bench import quiet as quiet_module


@pytest.fixture(params=[False, True], ids=["transformers-alone", "transformers-propagating"])
def handlers(request):
    """A root handler and transformers' own handler, each recording what it would print; removed afterwards.

    transformers' library logger does not propagate unless something (a test, a user) enables it: both are checked.
    """

    class Recording(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    root, library = Recording(), Recording()
    logging.getLogger().addHandler(root)
    transformers_logger = transformers_logging.get_logger()
    transformers_logger.addHandler(library)
    propagate, transformers_logger.propagate = transformers_logger.propagate, request.param
    yield root, library, request.param
    transformers_logger.propagate = propagate
    logging.getLogger().removeHandler(root)
    transformers_logger.removeHandler(library)


def _emit() -> None:
    transformers_logging.get_logger("transformers.modeling_utils").warning(
        "OPTForCausalLM has generative capabilities ... it doesn't directly inherit from `GenerationMixin`."
    )
    transformers_logging.get_logger("transformers.modeling_utils").warning("Some weights were not initialized")
    logging.getLogger().warning("freeze vision encoder")
    logging.getLogger("easyeditor.trainer.BaseTrainer").warning("Config: LiveEditMultimodalTrainingHparams(...)")
    logging.getLogger("easyedit_liveedit.bench.runner").warning("a warning of ours")


def test_known_noise_is_dropped_and_every_other_message_kept(handlers):
    root, library, propagating = handlers
    quiet_module.quiet(verbose=False)
    _emit()
    assert library.messages == ["Some weights were not initialized"]
    assert root.messages == ["Some weights were not initialized"] * propagating + ["a warning of ours"]


def test_verbose_shows_everything(handlers):
    root, library, propagating = handlers
    quiet_module.quiet(verbose=True)
    _emit()
    assert len(library.messages) == 2 and len(root.messages) == 3 + 2 * propagating
