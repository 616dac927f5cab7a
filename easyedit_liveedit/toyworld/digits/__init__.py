"""The digits world: one ``load_digits`` scan per subject, five question kinds about its digit.

``config.py`` (``ToyWorldConfig``: ``default``, ``small``), ``facts.py`` (question kinds, captions),
``images.py`` (PNG views of a scan), ``records.py`` (E-VQA / E-IC / classification records), ``pretrain.py``
(one stage with a digit classifier and an instance contrast) and ``build.py`` (data, tokenizers, backbone,
manifest). Two scans of one digit look alike to any image encoder that reads digits, so its subjects are near
duplicates: a stress test for a visual router. ``toyworld.build`` dispatches here for a ``ToyWorldConfig``.
"""
