"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DEV = REPO.parent / "shared" / "data" / "yolospine-dev"


@pytest.fixture(scope="session")
def yolospine_dev() -> Path:
    """The real development set (``../shared/data/yolospine-dev``); skips when absent."""
    if not (SHARED_DEV / "images").is_dir():
        pytest.skip("../shared/data/yolospine-dev is not present")
    return SHARED_DEV
