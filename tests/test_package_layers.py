"""The package's three layers and the direction of dependence between its subpackages, read from the code.

bench -> easyedit, diagnostics, toyworld -> backbones -> liveedit -> torch: the method (``liveedit``) imports nothing
of EasyEdit or transformers, only the glue (``easyedit``) and the harness reach EasyEdit, and no module imports
another that imports it back (function-local imports included, so none can hide a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import easyedit_liveedit

PACKAGE = Path(easyedit_liveedit.__file__).parent
# subpackage -> the subpackages it may import (the top-level __init__ and __main__ are the package's front door)
ALLOWED = {
    "liveedit": set(),
    "index": {"liveedit"},  # optional vector indexes (faiss) for the library's pre-filter
    "backbones": {"liveedit"},
    "easyedit": {"backbones", "liveedit", "index"},
    "toyworld": {"easyedit", "backbones", "liveedit"},
    "diagnostics": {"easyedit", "backbones", "liveedit"},
    "bench": {"easyedit", "diagnostics", "toyworld", "backbones", "liveedit", "index"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, with relative imports resolved; ``from p import m`` counts
    as importing ``p.m`` where that is one of ``modules``, else as importing ``p``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, set(modules)) if m in modules and m != name} for name, path in modules.items()
    }


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_subpackages_depend_only_in_the_documented_direction():
    wrong = []
    for module, imported in _graph().items():
        source = _layer(module)
        if source is None:
            continue
        for target in imported:
            layer = _layer(target)
            if layer is not None and layer != source and layer not in ALLOWED[source]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_module_imports_itself_back():
    graph = _graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_each_toy_world_imports_the_shared_parts_and_never_the_other_world():
    """Guards the toy worlds' layout: ``toyworld/digits`` and ``toyworld/scenes`` each build on the shared modules
    of ``toyworld`` and never import each other, and no shared module imports a world except the dispatch
    (``world.py``), so the tree shows which file serves which world. Seen failing with
    ``from ..digits.pretrain import random_views`` added to ``scenes/pretrain.py``."""
    worlds = ("digits", "scenes")
    wrong = []
    for module, imported in _graph().items():
        parts = module.split(".")
        if parts[:2] != ["easyedit_liveedit", "toyworld"] or len(parts) < 3:
            continue
        own = parts[2] if parts[2] in worlds else None  # None: a shared module
        for target in imported:
            other = target.split(".")
            if other[:2] != ["easyedit_liveedit", "toyworld"] or len(other) < 3 or other[2] not in worlds:
                continue
            if (own is None and parts[2] != "world") or own not in (None, other[2]):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_the_method_layer_imports_only_the_standard_library_and_torch():
    stdlib = set(sys.stdlib_module_names)
    for path in (PACKAGE / "liveedit").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            assert top in stdlib or top in ("torch", "easyedit_liveedit"), f"{path.name} imports {module}"
            assert top != "easyedit_liveedit" or module.startswith("easyedit_liveedit.liveedit"), (path, module)


def test_the_method_layer_imports_and_runs_with_easyeditor_unimportable():
    """Guards: ``liveedit`` is usable without EasyEdit (and without transformers): imported with both made
    unimportable and without the package's front door (which registers the plugin in EasyEdit), it builds a network
    and makes an expert."""
    code = f"""
import importlib.abc, sys, types
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("easyeditor", "transformers"):
            raise ImportError(f"{{name}} is not available here")
sys.meta_path.insert(0, Refuse())
front = types.ModuleType("easyedit_liveedit")
front.__path__ = [{str(PACKAGE)!r}]
sys.modules["easyedit_liveedit"] = front
import torch
from easyedit_liveedit.liveedit import LiveEditConfig, LiveEditNetwork
net = LiveEditNetwork(16, LiveEditConfig(edit_layer=0, cross_attn_dim=8, num_heads=2))
h, masks = torch.randn(2, 5, 16), [torch.ones(2, 5, dtype=torch.bool)] * 3
experts = net.make_experts(h, *masks)
assert experts.U.shape == (2, 4, 16)
assert not any(m.split(".")[0] in ("easyeditor", "transformers") for m in sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
