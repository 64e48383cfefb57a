"""The worker's counters in GET /server_info, which the GPU tests assert CUDA graphs on, checked on CPU.

On CPU SGLang captures no graphs: nothing is captured, and every draft and verify pass of
a fixed-budget server is counted as eager, one each per decode step. Runs on the default
suite's shared CPU servers (tests/conftest.py's shipped_servers), so it costs one request.
"""

from __future__ import annotations

import pytest
import torch

from gpu_report import generate, server_info, worker_state

pytestmark = pytest.mark.cpu_too


@pytest.fixture(scope="module")
def servers(shipped_servers):
    if torch.cuda.is_available():
        pytest.skip("on a GPU, test_server_gpu.py checks the counters on GPU servers")
    return shipped_servers


def test_counters_on_cpu(servers):
    url = servers["tree k4 n32"].url
    before = worker_state(url)
    generate(url, [5, 6, 7, 8, 9] * 6, sampling_params=dict(max_new_tokens=24, temperature=0, ignore_eos=True))
    after = worker_state(url)
    assert after["config"] == {"block_size": 16, "topk": 4, "node_budget": 32, "adaptive": False}
    steps = after["accept"]["steps"] - before["accept"]["steps"]
    assert steps > 0
    for stage in ("draft", "verify"):
        graphs = after["graphs"][stage]
        assert graphs["captured_bs"] == [] and graphs["replayed"] == 0, (stage, graphs)
        assert graphs["eager"] - before["graphs"][stage]["eager"] == steps, (stage, graphs, steps)
    committed = after["accept"]["committed_tokens"] - before["accept"]["committed_tokens"]
    assert committed >= 24 - 1  # the prefill gives the first token; a last step may commit past the end
    info = server_info(url)
    assert set(info["startup_time"]["cuda_graph"].values()) == {0.0}


def test_no_worker_state_without_sgl_dflash(servers):
    assert worker_state(servers["plain"].url) is None
