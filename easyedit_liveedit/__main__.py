"""``python -m easyedit_liveedit``: show that LiveEdit is registered beside EasyEdit's built-in editors."""

from __future__ import annotations

import importlib


def main() -> None:
    import easyedit_liveedit  # noqa: F401  (registers LiveEdit)

    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    train_dict = importlib.import_module("easyeditor.util.alg_train_dict")
    print("EasyEdit multimodal editors (ALG_MULTIMODAL_DICT):")
    for name, fn in sorted(alg_dict.ALG_MULTIMODAL_DICT.items()):
        print(f"  {name:<12} {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}")
    print("EasyEdit trainable editors (ALG_TRAIN_DICT):")
    for name, cls in sorted(train_dict.ALG_TRAIN_DICT.items()):
        print(f"  {name:<12} {cls.__module__}.{cls.__qualname__}")


if __name__ == "__main__":
    main()
