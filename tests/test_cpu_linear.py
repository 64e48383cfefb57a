"""The CPU engine's prepacked linear layers (sglang_patches): the oneDNN path runs, and computes x W^T + b.

The reference is the product in float64 (not F.linear, which is what the patch replaces); the
oneDNN ops are counted, and SGLang's own UnquantizedLinearMethod.apply is the fallback, so a
patch that quietly fell back to F.linear would fail here.
"""

from __future__ import annotations

import pytest
import torch

# SGLang's layers import torch's inductor, which reads the mkldnn ops: before `onednn` wraps them.
from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from sgl_dflash import sglang_patches
from sgl_dflash.sglang_patches import _prepacked_cpu_linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")

LINEAR_APPLY = "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply"


@pytest.fixture
def onednn(monkeypatch):
    """Counts of the two oneDNN ops the patch uses: weight packings and linear calls."""
    counts = {"_reorder_linear_weight": 0, "_linear_pointwise": 0}
    for name in counts:
        op = getattr(torch.ops.mkldnn, name)

        def counted(*args, _op=op, _name=name, **kwargs):
            counts[_name] += 1
            return _op(*args, **kwargs)

        monkeypatch.setattr(torch.ops.mkldnn, name, counted)
    return counts


def _no_fallback(method, layer, x, bias=None):
    raise AssertionError(f"fell back to SGLang's linear for {x.dtype} on {x.device}")


def _layer(out_features: int, in_features: int, gen: torch.Generator) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(out_features, in_features, generator=gen), requires_grad=False)
    return layer


def reference(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """x W^T + b in float64, summed out explicitly."""
    out = (x.double().unsqueeze(-2) * weight.double()).sum(-1)
    return out if bias is None else out + bias.double()


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 48), (1, 48), (3, 48), (2, 5, 48), (70, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_prepacked_linear_runs_onednn_and_matches_reference(onednn, shape, with_bias):
    gen = torch.Generator().manual_seed(0)
    layer = _layer(40, 48, gen)
    bias = torch.randn(40, generator=gen) if with_bias else None
    x = torch.randn(*shape, generator=gen)
    with torch.inference_mode():
        out = _prepacked_cpu_linear(_no_fallback, None, layer, x, bias)
        again = _prepacked_cpu_linear(_no_fallback, None, layer, x, bias)
    assert out.shape == (*shape[:-1], 40)
    close(out, reference(x, layer.weight, bias))
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert onednn == {"_reorder_linear_weight": 1, "_linear_pointwise": 2}  # packed once, used twice


def test_weights_updated_in_place_are_packed_again(onednn):
    gen = torch.Generator().manual_seed(1)
    layer = _layer(16, 8, gen)
    x = torch.randn(3, 8, generator=gen)
    close(_prepacked_cpu_linear(_no_fallback, None, layer, x), reference(x, layer.weight))
    with torch.no_grad():
        layer.weight.mul_(2.0)  # what a weight update does to the loaded parameter
    close(_prepacked_cpu_linear(_no_fallback, None, layer, x), reference(x, layer.weight))
    assert onednn == {"_reorder_linear_weight": 2, "_linear_pointwise": 2}


def test_weights_made_under_inference_mode(onednn):
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        layer = _layer(8, 8, gen)
        x = torch.randn(2, 8, generator=gen)
        close(_prepacked_cpu_linear(_no_fallback, None, layer, x), reference(x, layer.weight))
        close(_prepacked_cpu_linear(_no_fallback, None, layer, x), reference(x, layer.weight))
    assert onednn == {"_reorder_linear_weight": 1, "_linear_pointwise": 2}


def test_other_dtypes_keep_sglangs_path(onednn):
    calls = []

    def original(method, layer, x, bias=None):
        calls.append(x.dtype)
        return x @ layer.weight.T

    layer = _layer(4, 4, torch.Generator().manual_seed(2))
    layer.weight.data = layer.weight.data.to(torch.bfloat16)
    _prepacked_cpu_linear(original, None, layer, torch.randn(2, 4, dtype=torch.bfloat16))
    assert calls == [torch.bfloat16]
    assert onednn == {"_reorder_linear_weight": 0, "_linear_pointwise": 0}


def test_cpu_servers_route_sglangs_linear_layers_through_it(onednn, monkeypatch):
    """register_cpu (what a CPU server runs) hooks SGLang's UnquantizedLinearMethod.apply; applied
    here through SGLang's HookRegistry, that method runs the prepacked path in fp32 and SGLang's own
    code in bf16."""
    registered = []
    monkeypatch.setattr(HookRegistry, "register", lambda target, hook, kind=HookType.AFTER, **kw:
                        registered.append((target, hook, kind)))
    # register_cpu's other, process-wide changes are undone after the test.
    monkeypatch.setattr(torch.Tensor, "record_stream", torch.Tensor.record_stream)
    monkeypatch.setattr("sglang.srt.arg_groups.choices.add_draft_attention_backend_choices", lambda names: None)
    sglang_patches.register_cpu()
    hooks = [(kind, hook, None) for target, hook, kind in registered if target == LINEAR_APPLY]
    assert [(kind, hook) for kind, hook, _ in hooks] == [(HookType.AROUND, _prepacked_cpu_linear)]

    monkeypatch.setattr(UnquantizedLinearMethod, "apply", UnquantizedLinearMethod.apply)  # restored after
    HookRegistry._apply_target(LINEAR_APPLY, hooks)
    gen = torch.Generator().manual_seed(4)
    layer, bias = _layer(24, 32, gen), torch.randn(24, generator=gen)
    x = torch.randn(5, 32, generator=gen)
    with torch.inference_mode():
        close(UnquantizedLinearMethod().apply(layer, x, bias), reference(x, layer.weight, bias))
        assert onednn == {"_reorder_linear_weight": 1, "_linear_pointwise": 1}
        layer.weight.data = layer.weight.data.to(torch.bfloat16)
        out = UnquantizedLinearMethod().apply(layer, x.to(torch.bfloat16), bias.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert onednn == {"_reorder_linear_weight": 1, "_linear_pointwise": 1}  # bf16: not ours
    torch.testing.assert_close(out.double(), reference(x, layer.weight.float(), bias), rtol=0.05, atol=0.1)
