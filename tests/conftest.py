"""Shared test setup: offline hub, deterministic seeds, the plugin registered once per session."""

import os

# Without these, every failed hub lookup retries for ~25 s (ENVIRONMENT.md, break 7).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
