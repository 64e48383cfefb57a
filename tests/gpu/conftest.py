"""GPU suite (``bash launch/test_gpu.sh``): skipped where CUDA is absent, e.g. in CI.

Tests marked ``cpu_too`` run on CPU as well (they check, on the CPU servers the default
suite starts anyway, what the GPU tests assert on).

For launch/test_gpu.sh's one device command (see gpu_report.py):
* DFLASH_GPU_RESULTS: a markdown file that gets one line per test as it ends;
* DFLASH_GPU_DEADLINE: epoch seconds; a test not begun by then is skipped, so the
  run ends (servers stopped, results written) before the device command's limit;
* SIGTERM is turned into KeyboardInterrupt, so a run stopped from outside still stops
  its servers (pytest runs fixture teardown on KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from gpu_report import deadline, note


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cpu_too: a tests/gpu test that also runs without CUDA")
    if torch.cuda.is_available():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A hook, not a module-level skip: `pytest tests/gpu` on a CPU machine then reports skips, not an error.
    if torch.cuda.is_available():
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("cpu_too") is None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    end = deadline()
    if end is not None and time.time() > end and Path(__file__).parent in item.path.parents:
        pytest.skip("out of the device command's time budget (DFLASH_GPU_DEADLINE)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A conftest below the rootdir: pytest calls this for the tests in this folder only.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome.upper()
        detail = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = f": {report.longrepr[2]}"
        elif report.failed:
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "")
            detail = ": " + (crash or report.longreprtext.strip()[-300:]).replace("\n", " / ")[:600]
        note(f"- {outcome} `{report.nodeid.split('::', 1)[-1]}` ({report.duration:.1f} s){detail}")
