"""The CPU engine's prepacked linear layers (sglang_patches) compute what F.linear computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl_dflash.sglang_patches import _prepacked_cpu_linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _original(method, layer, x, bias=None):
    return F.linear(x, layer.weight, bias)


def _layer(out_features: int, in_features: int, gen: torch.Generator) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(out_features, in_features, generator=gen), requires_grad=False)
    return layer


@pytest.mark.parametrize("shape", [(0, 48), (1, 48), (3, 48), (2, 5, 48), (70, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_prepacked_linear_matches_f_linear(shape, with_bias):
    gen = torch.Generator().manual_seed(0)
    layer = _layer(40, 48, gen)
    bias = torch.randn(40, generator=gen) if with_bias else None
    x = torch.randn(*shape, generator=gen)
    with torch.inference_mode():
        out = _prepacked_cpu_linear(_original, None, layer, x, bias)
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, F.linear(x, layer.weight, bias), rtol=1e-5, atol=1e-5)


def test_weights_updated_in_place_are_packed_again():
    gen = torch.Generator().manual_seed(1)
    layer = _layer(16, 8, gen)
    x = torch.randn(3, 8, generator=gen)
    before = _prepacked_cpu_linear(_original, None, layer, x)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # what a weight update does to the loaded parameter
    after = _prepacked_cpu_linear(_original, None, layer, x)
    torch.testing.assert_close(after, 2.0 * before, rtol=1e-5, atol=1e-5)


def test_other_dtypes_keep_sglangs_path():
    calls = []

    def original(method, layer, x, bias=None):
        calls.append(x.dtype)
        return F.linear(x, layer.weight, bias)

    layer = _layer(4, 4, torch.Generator().manual_seed(2))
    layer.weight.data = layer.weight.data.to(torch.bfloat16)
    _prepacked_cpu_linear(original, None, layer, torch.randn(2, 4, dtype=torch.bfloat16))
    assert calls == [torch.bfloat16]


def test_weights_made_under_inference_mode():
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        layer = _layer(8, 8, gen)
        x = torch.randn(2, 8, generator=gen)
        torch.testing.assert_close(
            _prepacked_cpu_linear(_original, None, layer, x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5
        )
