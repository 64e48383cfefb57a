"""Make SGLang's CPU engine importable without a CPU build of sgl-kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHIM_DIR = str(Path(__file__).parent / "cpu_sgl_kernel")


def cpu_engine_requested() -> bool:
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0").lower() in ("1", "true")


def _cpu_sgl_kernel_imports() -> bool:
    """Whether an sgl_kernel with the CPU engine's ops imports (a CPU build; not the CUDA wheel,
    which fails without libcuda, nor the GPU kit's CUDA stand-in)."""
    try:
        import sgl_kernel

        sgl_kernel.copy_all_layer_kv_cache_cpu  # noqa: B018
    except Exception:
        sys.modules.pop("sgl_kernel", None)
        return False
    return True


def install_sgl_kernel_stand_in() -> None:
    """Put the stand-in ``sgl_kernel`` first on the path of this process and its children.

    Scheduler subprocesses import SGLang's memory pool (which imports
    ``sgl_kernel``) before they load plugins, so the path must be inherited
    through ``PYTHONPATH``, not set up by a hook.
    """
    if SHIM_DIR in sys.path or _cpu_sgl_kernel_imports():
        return
    sys.path.insert(0, SHIM_DIR)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([SHIM_DIR, *parts])
