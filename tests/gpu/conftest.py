"""GPU suite (``bash launch/test_gpu.sh``): skipped where CUDA is absent, e.g. in CI."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
