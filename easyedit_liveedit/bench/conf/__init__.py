"""Hydra config groups of the command line (YAML files; the schemas are in ``easyedit_liveedit.bench.config``)."""
