"""Shared fixtures: tiny models made on the fly and real SGLang servers on CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from sgl_dflash.tiny_models import make_pair

READY_TIMEOUT_S = 240

CPU_ENV = {
    "HF_HUB_OFFLINE": "1",
    "SGLANG_USE_CPU_ENGINE": "1",
    # A KV/req-slot leak raises inside the scheduler instead of only logging.
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1",
    "OMP_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python -m sglang.launch_server` process on CPU (fp32, torch_native)."""

    def __init__(
        self,
        model: Path,
        log_path: Path,
        *,
        draft: Optional[Path] = None,
        algorithm: str = "SGL_DFLASH",
        block_size: Optional[int] = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [
            sys.executable, "-m", "sglang.launch_server",
            "--model-path", str(model),
            "--device", "cpu", "--attention-backend", "torch_native", "--dtype", "float32",
            "--max-total-tokens", "4096", "--host", "127.0.0.1", "--port", str(self.port),
        ]
        if draft is not None:
            cmd += ["--speculative-algorithm", algorithm, "--speculative-draft-model-path", str(draft)]
            if block_size is not None:
                cmd += ["--speculative-num-draft-tokens", str(block_size)]
        cmd += list(extra)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **CPU_ENV},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> "Server":
        deadline = time.time() + READY_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.url}/model_info", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def generate(self, prompt: Any, timeout: float = 120, **sampling: Any) -> Any:
        key = "input_ids" if prompt and isinstance(prompt[0], (int, list)) else "text"
        body = {key: prompt, "sampling_params": sampling}
        r = requests.post(f"{self.url}/generate", json=body, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


_PAIRS: dict[tuple, tuple[Path, Path]] = {}


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
