"""Shared test setup: offline hub, deterministic seeds, the plugin registered once per session."""

import os

# Without these, every failed hub lookup retries for ~25 s (ENVIRONMENT.md, break 7).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, visibly and with the reason, on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The toy world's test-sized configuration, built fresh once per test session (about ten seconds).

    A fresh build, not the project cache: a cached world is reused while its configuration is unchanged, even
    if the code that built it has changed since.
    """
    from easyedit_liveedit import toyworld

    cache = tmp_path_factory.getbasetemp() / "toyworld-cache"
    return toyworld.build("small", cache=cache, progress=False, evaluate_limit=3)
