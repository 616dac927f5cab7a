"""The scenes world: every subject its own 2x2 composite of ``load_digits`` scans (E-VQA's structure).

``config.py`` (``SceneWorldConfig``: ``scenes``, ``scenes_small``), ``subjects.py`` (contents, rendering, the
subjects), ``facts.py`` (twelve question kinds, captions), ``records.py`` (E-VQA / E-IC / classification records),
``pretrain.py`` (two stages: vision, then joint), ``retrieval.py`` (finding a subject from its other rendering)
and ``build.py`` (data, tokenizers, backbone, manifest). ``toyworld.build`` dispatches here for a
``SceneWorldConfig``.
"""
