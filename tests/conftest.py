"""Shared fixtures: tiny models made on the fly and real SGLang servers on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgl_dflash.launcher import Server
from sgl_dflash.tiny_models import make_pair


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


# Reference models in this process are tiny; one thread keeps them from spinning against the
# servers' processes for the two cores.
torch.set_num_threads(1)

_PAIRS: dict[tuple, tuple[Path, Path]] = {}


@pytest.fixture(autouse=True)
def grad_mode_left_alone():
    """A test that turns autograd off globally breaks later training tests; name it here instead."""
    yield
    assert torch.is_grad_enabled(), "this test left torch's grad mode disabled"


@pytest.fixture(scope="session")
def tiny_pair(model_dir):
    """tiny_pair(flavour, arch="qwen3", block_size=4) -> (target, draft), made once per session."""

    def get(flavour: str, arch: str = "qwen3", block_size: int = 4) -> tuple[Path, Path]:
        key = (flavour, arch, block_size)
        if key not in _PAIRS:
            _PAIRS[key] = make_pair(
                model_dir / f"{flavour}-{arch}-b{block_size}",
                flavour=flavour,
                arch=arch,
                block_size=block_size,
            )
        return _PAIRS[key]

    return get


@pytest.fixture(scope="module")
def start_servers(tmp_path_factory):
    """start_servers(*kwargs_dicts) -> started Servers (in parallel), stopped after the module."""
    started: list[Server] = []

    def start(*specs: dict) -> list[Server]:
        logs = tmp_path_factory.mktemp("logs")
        servers = [Server(log_path=logs / f"server{i}.log", **spec) for i, spec in enumerate(specs)]
        started.extend(servers)
        return [s.wait_ready() for s in servers]

    yield start
    for s in started:
        s.stop()
