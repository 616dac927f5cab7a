"""Quiet by default: the command line hides third-party messages that tell its user nothing they can act on.

Each entry names where a message comes from and why it is noise here; ``run.verbose=true`` shows everything.
Errors and every other warning stay as loud as their libraries make them.
"""

from __future__ import annotations

import logging
import warnings

# (logger the message is emitted through, text it contains): why the user can do nothing about it
KNOWN_NOISE = (
    # EasyEdit's copies of OPT and BERT define prepare_inputs_for_generation without GenerationMixin; transformers
    # warns at every model construction. Only EasyEdit's authors can change those classes.
    ("transformers", "doesn't directly inherit from `GenerationMixin`"),
    ("transformers", "inherits from `GenerationMixin`"),
    # EasyEdit's from_pretrained calls pass torch_dtype=; transformers warns once per process.
    ("transformers", "`torch_dtype` is deprecated"),
    # EasyEdit logs on the root logger at every BLIP-2 / MiniGPT-4 construction.
    ("root", "freeze vision encoder"),
    # EasyEdit's BaseTrainer logs its whole hparams dataclass as one line before training.
    ("easyeditor.trainer.BaseTrainer", "Config: "),
)


class _DropKnownNoise(logging.Filter):
    """Drops the records of ``KNOWN_NOISE``; the continuation lines of transformers' warning are in one record."""

    def filter(self, record: logging.LogRecord) -> bool:
        name, message = record.name, record.getMessage()
        return not any(
            (name == source or name.startswith(source + ".") or source == "root") and text in message
            for source, text in KNOWN_NOISE
        )


def quiet(verbose: bool = False) -> None:
    """Install the filter on every handler that prints (the root's and transformers' own, which does not propagate).

    Call after logging is configured (Hydra configures it before the task runs); with ``verbose`` it does nothing.
    """
    if verbose:
        return
    from transformers.utils import logging as transformers_logging

    noise = _DropKnownNoise()
    # transformers' library logger prints through a handler of its own and does not propagate to the root
    for handler in [*logging.getLogger().handlers, *transformers_logging.get_logger().handlers]:
        if not any(isinstance(f, _DropKnownNoise) for f in handler.filters):
            handler.addFilter(noise)
    warnings.filterwarnings("ignore", message=r"torch\.utils\.checkpoint: the use_reentrant parameter")
