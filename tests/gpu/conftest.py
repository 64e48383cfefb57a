"""GPU suite (``bash launch/test_gpu.sh``): skipped where CUDA is absent, e.g. in CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A hook, not a module-level skip: `pytest tests/gpu` on a CPU machine then reports skips, not an error.
    if torch.cuda.is_available():
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
