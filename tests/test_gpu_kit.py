"""The GPU kit (launch/gpu_kit.py, launch/pack_gpu.sh): coverage, wheel surgery and the sgl_kernel stand-in.

The kit must let SGLang's server start on a GPU machine that holds only the
image's packages (launch/gpu_image.txt) and the kit's (launch/gpu_kit.txt). The
coverage test imports every server module in a view of this environment that
holds exactly those distributions, stripped as the kit strips them, as if on an
H100, with the CUDA stand-in for sgl_kernel. The stand-in's torch paths are
checked here against float64 formulas; its FlashInfer paths in tests/gpu.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "launch" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


def load_stand_in():
    """The CUDA stand-in under another name, so this process's own sgl_kernel (if any) is untouched."""
    path = gpu_kit.STAND_IN / "sgl_kernel" / "__init__.py"
    spec = importlib.util.spec_from_file_location("cuda_stand_in", path, submodule_search_locations=[str(path.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sk = load_stand_in()
# On a GPU (launch/test_gpu.sh runs this file's "cuda" cases) the stand-in takes FlashInfer's kernels.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rms_reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_norms_match_the_formula(device, dtype, tol):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 64, generator=gen) * 3).to(device, dtype)
    residual = torch.randn(5, 64, generator=gen).to(device, dtype)
    w = torch.randn(64, generator=gen).to(device, dtype)
    eps = 1e-5

    torch.testing.assert_close(sk.rmsnorm(x, w, eps).double(), rms_reference(x, w, eps), atol=tol, rtol=tol)
    torch.testing.assert_close(sk.gemma_rmsnorm(x, w, eps).double(), rms_reference(x, w.double() + 1, eps),
                               atol=tol, rtol=tol)
    out = torch.empty_like(x)
    assert sk.rmsnorm(x, w, eps, out=out) is out
    torch.testing.assert_close(out.double(), rms_reference(x, w, eps), atol=tol, rtol=tol)

    for fused, weight in ((sk.fused_add_rmsnorm, w.double()), (sk.gemma_fused_add_rmsnorm, w.double() + 1)):
        inp, res = x.clone(), residual.clone()
        assert fused(inp, res, w, eps) is None  # in place, as the real op
        added = x.double() + residual.double()
        torch.testing.assert_close(res.double(), added, atol=tol, rtol=tol)
        torch.testing.assert_close(inp.double(), rms_reference(added.to(dtype), weight, eps), atol=tol, rtol=tol)


GATES = {
    "silu_and_mul": lambda a: a / (1 + torch.exp(-a)),
    "gelu_and_mul": lambda a: 0.5 * a * (1 + torch.erf(a / math.sqrt(2))),
    "gelu_tanh_and_mul": lambda a: 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("name", list(GATES))
def test_gated_activations_match_the_formula(name, dtype, tol, device):
    x = (torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1)) * 2).to(device, dtype)
    expected = GATES[name](x[..., :16].double()) * x[..., 16:].double()
    torch.testing.assert_close(getattr(sk, name)(x).double(), expected, atol=tol, rtol=tol)
    out = torch.empty(3, 7, 16, device=device, dtype=dtype)
    assert getattr(sk, name)(x, out) is out
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def distinct_probs(rows: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, vocab, generator=gen) * 2, -1)


@pytest.mark.parametrize("device", DEVICES)
def test_top_k_renorm_keeps_the_k_largest(device):
    probs = distinct_probs(4, 20, 2)
    ks = [1, 3, 20, 7]
    for top_k in (torch.tensor(ks, dtype=torch.int32, device=device), 3):
        got = sk.top_k_renorm_prob(probs.to(device), top_k).cpu()
        for row, k in enumerate(ks if isinstance(top_k, torch.Tensor) else [3] * 4):
            order = sorted(range(20), key=lambda i: -probs[row, i].item())
            expected = torch.zeros(20, dtype=torch.float64)
            for i in order[:k]:
                expected[i] = probs[row, i].item()
            torch.testing.assert_close(got[row].double(), expected / expected.sum(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_top_p_renorm_keeps_the_smallest_set_reaching_p(device):
    probs = distinct_probs(4, 20, 3)
    ps = [0.05, 0.5, 0.9, 1.0]
    for top_p in (torch.tensor(ps, device=device), 0.5):
        got = sk.top_p_renorm_prob(probs.to(device), top_p).cpu()
        for row, p in enumerate(ps if isinstance(top_p, torch.Tensor) else [0.5] * 4):
            expected, mass = torch.zeros(20, dtype=torch.float64), 0.0
            for i in sorted(range(20), key=lambda i: -probs[row, i].item()):
                if mass >= p:
                    break
                expected[i] = probs[row, i].item()
                mass += probs[row, i].item()
            torch.testing.assert_close(got[row].double(), expected / expected.sum(), atol=1e-5, rtol=1e-4)


def test_what_the_stand_in_lacks_fails_naming_the_op():
    with pytest.raises(NotImplementedError, match="int8_scaled_mm"):
        sk.int8_scaled_mm(None)
    with pytest.raises(AttributeError, match="weak_ref_tensor"):
        sk.weak_ref_tensor  # noqa: B018
    quantization = importlib.import_module("cuda_stand_in.quantization")
    with pytest.raises(NotImplementedError, match="ggml_dequantize"):
        quantization.ggml_dequantize()
    kvcacheio = importlib.import_module("cuda_stand_in.kvcacheio")
    with pytest.raises(NotImplementedError, match="transfer_kv_per_layer"):
        kvcacheio.transfer_kv_per_layer()
    assert importlib.import_module("cuda_stand_in.utils").is_arch_support_pdl() is False  # no GPU here


def test_lists_pin_the_kit_and_do_not_overlap_the_image():
    kit, image = gpu_kit.read_list(gpu_kit.KIT_LIST), gpu_kit.read_list(gpu_kit.IMAGE_LIST)
    assert all(kit.values()), "every kit version is pinned"
    assert not set(kit) & set(image)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"sglang=={kit["sglang"]}"' in pyproject


def test_server_imports_with_only_the_image_and_the_kit():
    """Every server module and bench_serving import as if on an H100 with only the image's and the kit's
    distributions."""
    result = gpu_kit.check_imports(Path(sysconfig.get_paths()["purelib"]))
    assert result["failed"] == {}
    assert Path(result["sgl_kernel"]).is_relative_to(gpu_kit.STAND_IN)
    assert {"sgl_dflash.worker", "flashinfer", "sglang.bench_serving"} <= set(result["modules"])
    assert not any(m.startswith("sglang.multimodal_gen") for m in result["modules"])  # stripped from the kit


def record_matches(wheel: Path) -> None:
    """Every file of the wheel is in RECORD with its hash and size, and nothing else is."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(z.read(record_name).decode())))
        assert {r[0] for r in rows} == names
        for path, digest, size in rows:
            if path != record_name:
                data = z.read(path)
                assert digest == gpu_kit._record_hash(data) and int(size) == len(data)


def test_strip_wheel_drops_the_stripped_files_and_their_record_lines(tmp_path, monkeypatch):
    src = tmp_path / "demo-1.0-py3-none-any.whl"
    files = {"demo/__init__.py": b"x = 1\n", "demo/big/blob.so": b"\0" * 100, "demo/big/keep,E=1.json": b"{}",
             "demo-1.0.dist-info/METADATA": b"Name: demo\nVersion: 1.0\n"}
    gpu_kit._write_wheel(src, files, "demo-1.0.dist-info")
    monkeypatch.setitem(gpu_kit.STRIP, "demo", ["demo/big/*"])
    monkeypatch.setitem(gpu_kit.KEEP, "demo", ["demo/big/keep*"])
    dst = tmp_path / "out.whl"
    assert gpu_kit.strip_wheel(src, dst, "demo") == 1
    record_matches(dst)
    assert "demo/big/blob.so" not in zipfile.ZipFile(dst).namelist()


def test_stub_wheels_install_without_an_index(tmp_path):
    site = tmp_path / "site"
    for name in gpu_kit.STUBS:
        wheel = gpu_kit.stub_wheel(name, tmp_path)
        record_matches(wheel)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        str(site), str(wheel)], check=True)
    code = ("from IPython.display import HTML, display; display(HTML('ok').data)\n"
            "from datasets import load_dataset\n"
            "try:\n    load_dataset('mmmu')\nexcept ImportError as e:\n    print('datasets' in str(e))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ok", "True"]
