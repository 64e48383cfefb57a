"""Shared fixtures: tiny models made on the fly and real SGLang servers on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgl_dflash.launcher import Server, stop_all
from sgl_dflash.tiny_models import make_pair

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"
SHIPPED_TARGET, SHIPPED_DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"
# Plain decoding is the reference without overlap scheduling (with it SGLang's plain decoding
# applies penalties one token late); every server takes custom logit processors.
SHIPPED_COMMON = ("--enable-custom-logit-processor",)
SHIPPED = {
    "plain": {"model": SHIPPED_TARGET, "extra": SHIPPED_COMMON + ("--disable-overlap-schedule",)},
    "chain": {"model": SHIPPED_TARGET, "draft": SHIPPED_DRAFT, "block_size": 16, "extra": SHIPPED_COMMON},
    "tree k4 n32": {"model": SHIPPED_TARGET, "draft": SHIPPED_DRAFT, "block_size": 32,
                    "extra": SHIPPED_COMMON + ("--speculative-eagle-topk", "4")},
}


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


def _launch(logs: Path, specs: dict[str, dict], started: list[Server]) -> dict[str, Server]:
    """Start every spec's server at once (they load in parallel), then wait for each to be ready."""
    servers = {name: Server(log_path=logs / f"{name.replace(' ', '_')}.log", **spec) for name, spec in specs.items()}
    started.extend(servers.values())
    return {name: s.wait_ready() for name, s in servers.items()}


@pytest.fixture(scope="module")
def start_servers(tmp_path_factory):
    """start_servers(*kwargs_dicts) -> started Servers (in parallel), stopped after the module."""
    started: list[Server] = []

    def start(*specs: dict) -> list[Server]:
        logs = tmp_path_factory.mktemp("logs")
        return list(_launch(logs, {f"server{i}": spec for i, spec in enumerate(specs)}, started).values())

    yield start
    stop_all(started)


@pytest.fixture(scope="session")
def shipped_servers(tmp_path_factory):
    """The shipped pair's SHIPPED servers by name, started once for every module that uses them.

    Server starts dominate the suite's time; these modules run last (see
    pytest_collection_modifyitems), so the shared servers never sit idle, holding memory, beside
    other modules' servers.
    """
    started: list[Server] = []
    try:
        yield _launch(tmp_path_factory.mktemp("shipped_logs"), SHIPPED, started)
    finally:
        stop_all(started)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules on the shared shipped-pair servers run last, in their usual order."""
    users = {item.module for item in items if "shipped_servers" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: getattr(item, "module", None) in users)
