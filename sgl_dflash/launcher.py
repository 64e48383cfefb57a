"""Start and talk to a real SGLang server process (used by the demo, bench and tests)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import requests

READY_TIMEOUT_S = 240

# SGLang's CPU engine, offline; a KV/req-slot leak raises inside the scheduler.
CPU_ENV = {
    "HF_HUB_OFFLINE": "1",
    "SGLANG_USE_CPU_ENGINE": "1",
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1",
}
# --sleep-on-idle: an idle scheduler otherwise polls its sockets in a busy loop, a whole core
# each; servers side by side (tests, the demo) would take the cores from the one that works.
CPU_ARGS = ("--device", "cpu", "--attention-backend", "torch_native", "--dtype", "float32", "--sleep-on-idle")


# Below the kernel's ephemeral range (where every outgoing connection takes its local port, so a
# port picked by bind(0) can be taken before a slow-starting server binds it) and below
# SGLang's own pick for its NCCL port (22000-29999).
PORT_RANGE = (12000, 21999)


def free_port() -> int:
    for port in random.sample(range(PORT_RANGE[0], PORT_RANGE[1] + 1), 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def _local(path: Path | str) -> str:
    """A model path made absolute when it is a local folder: servers run in their log's folder."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def server_command(
    model: Path,
    port: int,
    *,
    draft: Optional[Path] = None,
    algorithm: str = "SGL_DFLASH",
    block_size: Optional[int] = None,
    device: str = "cpu",
    max_total_tokens: int = 4096,
    extra: tuple[str, ...] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", _local(model),
           "--host", "127.0.0.1", "--port", str(port)]
    if device == "cpu":
        cmd += [*CPU_ARGS, "--max-total-tokens", str(max_total_tokens)]
    if draft is not None:
        cmd += ["--speculative-algorithm", algorithm, "--speculative-draft-model-path", _local(draft)]
        if block_size is not None:
            cmd += ["--speculative-num-draft-tokens", str(block_size)]
    return cmd + list(extra)


class Server:
    """A `python -m sglang.launch_server` child process with its log in a file."""

    def __init__(self, model: Path, log_path: Path, *, device: str = "cpu",
                 env: Optional[dict[str, str]] = None, **kwargs: Any) -> None:
        self.log_path = log_path
        cpu_env = {**CPU_ENV, "OMP_NUM_THREADS": "1"} if device == "cpu" else {}
        self._env = {**os.environ, **cpu_env, **(env or {})}
        self._command = lambda port: server_command(model, port, device=device, **kwargs)
        self._launch()

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "w")
        # In the log's folder, not the caller's: `python -m` puts the working folder first on the
        # path, and a source checkout's sgl_dflash (whose kernels/ ships as sgl_dflash.kernels only
        # when installed) would shadow the installed package, as on the GPU kit's machines.
        self.proc = subprocess.Popen(self._command(self.port), env=self._env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.log_path.parent)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "Server":
        deadline = time.time() + timeout
        relaunches = 2
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            if relaunches and "address already in use" in self.log()[-2000:]:
                # Something bound the port between our pick and the server's bind: pick another.
                relaunches -= 1
                self.stop()
                self._launch()
                deadline = time.time() + timeout
                continue
            try:
                if requests.get(f"{self.url}/model_info", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def generate(self, prompt: Any, timeout: float = 300, **sampling: Any) -> Any:
        """POST /generate with text, token ids, or a batch of either."""
        key = "input_ids" if prompt and isinstance(prompt[0], (int, list)) else "text"
        r = requests.post(f"{self.url}/generate", json={key: prompt, "sampling_params": sampling},
                          timeout=timeout)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        stop_all([self])

    def __enter__(self) -> "Server":
        return self.wait_ready()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_all(servers: Iterable[Server]) -> None:
    """Stop servers together: each takes seconds to shut down, so all are signalled before any wait."""
    servers = list(servers)
    running = [s for s in servers if s.proc.poll() is None]
    for s in running:
        os.killpg(s.proc.pid, signal.SIGTERM)
    for s in running:
        try:
            s.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait()
    for s in servers:
        s._log.close()
