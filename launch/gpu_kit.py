"""The GPU kit: SGLang's server stack for GPU machines that have torch but no package registry.

The lent GPU machines (launch/gpu_image.txt: Python 3.12, torch 2.11, Triton 3.6,
no registry, 64 MiB travels per call) lack SGLang and its server-time packages.
``pack`` downloads what launch/gpu_kit.txt pins as cp312 manylinux wheels, strips
what the server never loads (STRIP), adds stubs for two modules SGLang imports but
the kit's uses never call (STUBS) and writes ``.gpu/wheels``.
On the GPU machine launch/gpu_env.sh installs them with ``pip --no-index --no-deps``
and puts sgl_dflash/cuda_sgl_kernel (the sgl_kernel stand-in) on the path.

``farm`` and ``probe`` check the kit's coverage without a GPU: ``farm`` lays out a
view of a virtual environment's site-packages holding only the image's and the
kit's distributions (stripped as in the kit), ``probe`` imports SGLang's server
modules there as if CUDA were present, with the CUDA stand-in for sgl_kernel.

    python launch/gpu_kit.py pack                # -> .gpu/ (idempotent; cache in .cache/gpu-kit)
    python launch/gpu_kit.py check-imports       # farm + probe, exit 1 on a missing module
    python launch/gpu_kit.py image-requirements  # the image's packages the server imports
    python launch/gpu_kit.py probe | rehearse    # in the rehearsal's environment (launch/rehearse_gpu.sh)
"""

from __future__ import annotations

import argparse
import base64
import csv
import fnmatch
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIT_LIST, IMAGE_LIST = REPO / "launch" / "gpu_kit.txt", REPO / "launch" / "gpu_image.txt"
KIT_DIR, CACHE = REPO / ".gpu", REPO / ".cache" / "gpu-kit"
STAND_IN = REPO / "sgl_dflash" / "cuda_sgl_kernel"
TRAVEL_LIMIT_MIB = 64
PYTHON, PLATFORMS = "3.12", [
    "manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 38, 39))]

# Files the server never loads, by distribution (globs over the wheel's paths; KEEP overrides):
# - sglang's Rust extensions are built for torch 2.14 and load only behind gRPC, the Rust server
#   and multimodal options; the radix tree's Rust core is replaced by its Python twin
#   (SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python in gpu_env.sh); multimodal_gen is the
#   diffusion-serving runtime.
# - FlashInfer JIT-compiles attention from its top-level csrc files and its include/ headers; the
#   op families in csrc's subfolders (MoE, GEMM, ...: 250 MB unpacked), the MoE expert-parallel
#   kernel sources, the experimental kernels (all but the one package its __init__ imports) and
#   CUTLASS's examples and Python generator are not used by dense attention, sampling or norms.
STRIP = {
    "sglang": ["sglang/srt/rust_extensions/*.so", "sglang/srt/mem_cache/rust_tree_core/*.so",
               "sglang/multimodal_gen/*"],
    "flashinfer-python": ["flashinfer/data/csrc/*/*", "flashinfer/moe_ep/*", "flashinfer/experimental/*",
                          "flashinfer/data/cutlass/examples/*", "flashinfer/data/cutlass/python/*"],
}
KEEP = {"flashinfer-python": ["flashinfer/experimental/__init__.py", "flashinfer/experimental/cake_nvfp4_per_token/*"]}
# Server modules imported at start (launch_server, scheduler, model runner, graph runners, the
# Qwen3/Llama/DFlash models, FlashInfer and Triton backends, sampler, radix cache, the built-in
# DFLASH worker, SGLang's JIT ops, xgrammar) and the plugin.
SERVER_MODULES = (
    "sglang.launch_server", "sglang.srt.entrypoints.http_server", "sglang.srt.entrypoints.engine",
    "sglang.srt.managers.scheduler", "sglang.srt.managers.tokenizer_manager",
    "sglang.srt.managers.detokenizer_manager", "sglang.srt.managers.tp_worker",
    "sglang.srt.model_executor.model_runner", "sglang.srt.model_executor.runner.decode_cuda_graph_runner",
    "sglang.srt.model_executor.runner.prefill_cuda_graph_runner",
    "sglang.srt.model_executor.model_runner_components.cuda_graph_setup",
    "sglang.srt.model_executor.model_runner_components.attention_backend_setup",
    "sglang.srt.models.qwen3", "sglang.srt.models.llama", "sglang.srt.models.dflash",
    "sglang.srt.layers.attention.flashinfer_backend", "sglang.srt.layers.attention.triton_backend",
    "sglang.srt.layers.sampler", "sglang.srt.mem_cache.memory_pool", "sglang.srt.mem_cache.unified_radix_cache",
    "sglang.srt.speculative.dflash_worker_v2", "sglang.kernels.ops.attention.rope",
    "sglang.kernels.ops.layernorm.norm", "sglang.kernels.ops.activation.activation",
    "sglang.srt.constrained.xgrammar_backend", "sgl_dflash.plugin", "sgl_dflash.worker",
)
# What the sweep's client imports besides (python -m sglang.bench_serving, through bench/compare.py).
BENCH_MODULES = ("sglang.bench_serving",)
# Stub distributions for modules SGLang imports at module level but the kit's uses never call:
# IPython.display (sglang/utils.py, for notebooks) and HF datasets (sglang.benchmark's MMMU loader).
STUBS = {
    "ipython": {
        "IPython/__init__.py": '"""Stub (sgl-dflash GPU kit): SGLang imports IPython.display for notebooks only."""\n',
        "IPython/display.py": (
            '"""Stub of IPython.display for servers without IPython (sgl-dflash GPU kit)."""\n\n\n'
            "class HTML:\n    def __init__(self, data=None, **kwargs):\n        self.data = data\n\n\n"
            "def display(*objs, **kwargs):\n    print(*objs)\n"),
    },
    "datasets": {
        "datasets/__init__.py": (
            '"""Stub (sgl-dflash GPU kit): sglang.benchmark imports load_dataset at module level."""\n\n\n'
            "def load_dataset(*args, **kwargs):\n"
            '    raise ImportError("HF datasets is not in the sgl-dflash GPU kit (a stub): '
            'use --dataset-name random or custom")\n'),
    },
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> dict[str, str | None]:
    """'name==version' or 'name' per line (comments after #) -> {normalized name: version or None}."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[norm(name)] = version or None
    return out


def stripped(dist: str, path: str) -> bool:
    def matches(patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)

    return matches(STRIP.get(dist, [])) and not matches(KEEP.get(dist, []))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_wheel(dst: Path, files: dict[str, bytes], dist_info: str) -> None:
    """A wheel from {path: bytes}; RECORD is written last, with every other file's hash."""
    record = io.StringIO()
    rows = [(p, _record_hash(b), len(b)) for p, b in files.items()] + [(f"{dist_info}/RECORD", "", "")]
    csv.writer(record, lineterminator="\n").writerows(rows)  # CSV: some of sglang's paths hold commas
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for p, b in files.items():
            z.writestr(p, b)
        z.writestr(f"{dist_info}/RECORD", record.getvalue())


def strip_wheel(src: Path, dst: Path, dist: str) -> int:
    """Copy a wheel without its STRIP files (and their RECORD lines); returns how many were dropped."""
    with zipfile.ZipFile(src) as z:
        names = [n for n in z.namelist() if not n.endswith("/RECORD")]
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        kept = {n: z.read(n) for n in names if not stripped(dist, n)}
    _write_wheel(dst, kept, dist_info)
    return len(names) - len(kept)


def stub_wheel(name: str, dst_dir: Path) -> Path:
    """A wheel of the STUBS distribution ``name``."""
    version = "0.0.0+sgl_dflash_stub"
    dist_info = f"{name}-{version}.dist-info"
    files = {p: text.encode() for p, text in STUBS[name].items()}
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: sgl-dflash\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    dst = dst_dir / f"{name}-{version}-py3-none-any.whl"
    _write_wheel(dst, files, dist_info)
    return dst


def download(name: str, version: str) -> Path:
    """The cp312 manylinux (or pure) wheel of name==version, from the cache or the registry."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = norm(name).replace("-", "_")
    hits = [p for p in CACHE.glob("*.whl") if norm(p.name.split("-")[0]) == norm(name)
            and p.name.split("-")[1] == version]
    if not hits:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON, "--implementation", "cp", "-d", str(CACHE),
               *(f"--platform={p}" for p in PLATFORMS), f"{name}=={version}"]
        subprocess.run(cmd, check=True, env={**os.environ, "PIP_CONSTRAINT": ""})
        hits = [p for p in CACHE.glob("*.whl") if norm(p.name.split("-")[0]) == norm(name)
                and p.name.split("-")[1] == version]
    if len(hits) != 1:
        raise SystemExit(f"[pack] expected one wheel of {stem}=={version} in {CACHE}, found {hits}")
    return hits[0]


def travelling_bytes() -> int:
    """What the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    paths = [REPO / p for p in out.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def pack() -> None:
    kit = read_list(KIT_LIST)
    unpinned = [n for n, v in kit.items() if v is None]
    if unpinned:
        raise SystemExit(f"[pack] {KIT_LIST.name} must pin every version; unpinned: {unpinned}")
    wheels = KIT_DIR / "wheels"
    shutil.rmtree(KIT_DIR, ignore_errors=True)
    wheels.mkdir(parents=True)
    manifest = []
    for i, (name, version) in enumerate(kit.items(), 1):
        src = download(name, version)
        dst = wheels / src.name
        if name in STRIP:
            dropped = strip_wheel(src, dst, name)
            print(f"[pack] {i}/{len(kit)} {name}=={version}: stripped {dropped} files", flush=True)
        else:
            shutil.copy(src, dst)
            print(f"[pack] {i}/{len(kit)} {name}=={version}", flush=True)
        manifest.append(f"{name}=={version} {dst.name} {dst.stat().st_size}")
    for name in STUBS:
        stub = stub_wheel(name, wheels)
        manifest.append(f"{name} (stub) {stub.name} {stub.stat().st_size}")
    (KIT_DIR / "MANIFEST").write_text("\n".join(manifest) + "\n")
    kit_mib = sum(p.stat().st_size for p in KIT_DIR.rglob("*") if p.is_file()) / 2**20
    repo_mib = travelling_bytes() / 2**20
    total = kit_mib + repo_mib
    print(f"[pack] .gpu: {kit_mib:.1f} MiB; the working tree: {repo_mib:.1f} MiB; "
          f"together {total:.1f} of {TRAVEL_LIMIT_MIB} MiB")
    if total > TRAVEL_LIMIT_MIB:
        raise SystemExit(f"[pack] over the {TRAVEL_LIMIT_MIB} MiB that travels to the GPU machine")


def farm(out: Path, allowed: set[str], site: Path) -> None:
    """Lay out ``out`` as a view of ``site`` holding only the allowed distributions' files.

    A path owned only by allowed distributions becomes a symlink; a folder shared with others is
    recreated and filled file by file. STRIP files are left out, as in the kit.
    """
    owners: dict[tuple[str, ...], set[str]] = defaultdict(set)
    holds_stripped: set[tuple[str, ...]] = set()  # folders that must be laid out file by file
    for dist in md.distributions(path=[str(site)]):
        name = norm(dist.metadata["Name"])
        for f in dist.files or []:
            parts = Path(f).parts
            if parts[0] == ".." or parts[0].endswith(".pth") or parts[0].startswith("__editable"):
                continue
            if stripped(name, "/".join(parts)):
                holds_stripped.update(parts[:i] for i in range(1, len(parts)))
                continue
            for i in range(1, len(parts) + 1):
                owners[parts[:i]].add(name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def place(rel: tuple[str, ...]) -> None:
        src, dst, names = site.joinpath(*rel), out.joinpath(*rel), owners.get(rel, set())
        if not names & allowed:
            return
        if names <= allowed and rel not in holds_stripped:
            dst.symlink_to(src)
        elif src.is_dir() and not src.is_symlink():
            dst.mkdir(exist_ok=True)
            for entry in os.listdir(src):
                place(rel + (entry,))

    for entry in os.listdir(site):
        place((entry,))


PROBE = r"""
import importlib, json, sys, torch, types
# Pretend to be an H100 so SGLang takes its CUDA import paths.
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.current_device = lambda: 0
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H100 80GB HBM3"
torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(
    major=9, minor=0, name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, multi_processor_count=132,
    L2_cache_size=50 * 2**20, gcnArchName="", warp_size=32, uuid="0")
failed = {}
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except BaseException as e:
        failed[m] = f"{type(e).__name__}: {e}"
        break
sgl_kernel = getattr(sys.modules.get("sgl_kernel"), "__file__", None)
print("PROBE " + json.dumps({"failed": failed, "modules": sorted(sys.modules), "sgl_kernel": sgl_kernel}))
"""


def probe(site: Path | None, modules: tuple[str, ...] = SERVER_MODULES) -> dict:
    """Import ``modules`` in a fresh interpreter, as if on an H100.

    With ``site``: only it and the CUDA stand-in for sgl_kernel are on the path (``-S``). Without:
    the environment as it is (the rehearsal's, set up by gpu_env.sh).
    """
    env, flags = dict(os.environ), []
    if site is not None:
        env = {k: v for k, v in env.items() if not k.startswith(("PYTHON", "SGLANG"))}
        env.update(PYTHONPATH=os.pathsep.join([str(STAND_IN), str(site)]), PYTHONNOUSERSITE="1",
                   SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK="1", SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND="python",
                   TVM_FFI_DISABLE_TORCH_C_DLPACK="1")
        flags = ["-S"]
    proc = subprocess.run([sys.executable, *flags, "-c", PROBE, *modules], env=env, cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=600)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"probe crashed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(line[len("PROBE "):])


def check_imports(site: Path) -> dict:
    """farm + probe over the image's and the kit's distributions; the probe's result."""
    allowed = set(read_list(IMAGE_LIST)) | set(read_list(KIT_LIST))
    with tempfile.TemporaryDirectory() as tmp:
        farm(Path(tmp) / "site", allowed - set(STUBS), site)
        view = Path(tmp) / "site"
        for rel, text in (item for files in STUBS.values() for item in files.items()):  # as the stub wheels install
            (view / rel).parent.mkdir(exist_ok=True)
            (view / rel).write_text(text)
        # sgl_dflash as pip lays it out: the top-level kernels/ ships as sgl_dflash.kernels.
        (view / "sgl_dflash").mkdir()
        for entry in (REPO / "sgl_dflash").iterdir():
            (view / "sgl_dflash" / entry.name).symlink_to(entry)
        (view / "sgl_dflash" / "kernels").symlink_to(REPO / "kernels")
        return probe(view, SERVER_MODULES + BENCH_MODULES)


def image_requirements(site: Path) -> list[str]:
    """The image's distributions that the server imports at start, pinned where the image's
    version is known: what the rehearsal installs to stand in for the GPU machine's image."""
    image = read_list(IMAGE_LIST)
    modules = check_imports(site)["modules"]
    owners = md.packages_distributions()
    used = {norm(d) for m in modules for d in owners.get(m.split(".")[0], [])}
    return sorted(f"{n}=={image[n]}" if image[n] else n for n in used & set(image))


def rehearse(out: Path, prompts: int = 8, max_new_tokens: int = 64) -> None:
    """On CPU, in the rehearsal's environment: plain and a K4 N32 tree server; greedy outputs must match."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from transformers import AutoTokenizer

    from sgl_dflash.launcher import Server, stop_all
    from sgl_dflash.training.corpus import heldout_prompts

    assets = REPO / "sgl_dflash" / "assets"
    target, draft = assets / "tiny-target", assets / "tiny-draft"
    common = ("--enable-custom-logit-processor",)
    logs = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    t0 = time.time()
    servers = {"plain": Server(target, logs / "plain.log", extra=common + ("--disable-overlap-schedule",)),
               "tree k4 n32": Server(target, logs / "tree.log", draft=draft, block_size=32,
                                     extra=common + ("--speculative-eagle-topk", "4"))}
    try:
        for server in servers.values():
            server.wait_ready()
        ready_s = time.time() - t0
        ids = heldout_prompts(AutoTokenizer.from_pretrained(target), prompts, 48, seed=1)
        rows, ok = [], True
        for concurrency in (1, prompts):
            outs = {}
            for name, server in servers.items():
                with ThreadPoolExecutor(concurrency) as pool:
                    outs[name] = list(pool.map(lambda p, s=server: s.generate(
                        p, max_new_tokens=max_new_tokens, temperature=0, ignore_eos=True), ids))
            same = sum(a["output_ids"] == b["output_ids"] for a, b in zip(outs["plain"], outs["tree k4 n32"]))
            accept = [o["meta_info"].get("spec_accept_length", 0.0) for o in outs["tree k4 n32"]]
            ok &= same == len(ids) and min(accept) > 1.0
            rows.append(f"| {concurrency} | {same} of {len(ids)} | {sum(accept) / len(accept):.2f} "
                        f"[{min(accept):.2f}-{max(accept):.2f}] |")
    finally:
        stop_all(servers.values())
    import sglang
    import transformers
    import triton
    versions = (f"Python {sys.version.split()[0]}, torch {torch.__version__}, Triton {triton.__version__}, "
                f"transformers {transformers.__version__}, sglang {sglang.__version__}")
    report = [
        "# GPU kit rehearsal on CPU", "",
        f"Date: {time.strftime('%Y-%m-%d')}. Machine: this project's CPU machine ({os.cpu_count()} cores), no GPU.",
        f"Environment: {versions}; the image's packages the server imports at the image's versions where known",
        "(launch/gpu_image.txt), every other distribution removed, then `.gpu/wheels` and this repo installed",
        "with pip --no-index --no-deps (launch/gpu_env.sh). Made by `bash launch/rehearse_gpu.sh`.", "",
        f"Shipped tiny pair, fp32, CPU engine: plain decoding vs SGL_DFLASH tree K4 N32, {len(ids)} held-out",
        f"prompts of 48 tokens, {max_new_tokens} greedy tokens each. Both servers ready in {ready_s:.0f} s.", "",
        "| concurrency | outputs identical to plain | accept length, mean [min-max] over requests |", "|---|---|---|", *rows, "",
        f"Verdict: {'PASS' if ok else 'FAIL'}.", ""]
    out.write_text("\n".join(report))
    print("\n".join(report))
    if not ok:
        raise SystemExit("[rehearse] greedy outputs differ from plain decoding, or no draft was accepted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["pack", "check-imports", "probe", "image-requirements", "rehearse"])
    ap.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                    help="site-packages to farm from (check-imports, image-requirements; default: this interpreter's)")
    ap.add_argument("--out", type=Path, help="rehearse: where to write the report (markdown)")
    args = ap.parse_args()
    if args.command == "pack":
        pack()
    elif args.command == "image-requirements":
        print("\n".join(image_requirements(args.site)))
    elif args.command == "rehearse":
        rehearse(args.out or REPO / "bench" / "results" / "gpu-kit-rehearsal.md")
    else:
        result = check_imports(args.site) if args.command == "check-imports" else probe(None, SERVER_MODULES + BENCH_MODULES)
        if result["failed"]:
            raise SystemExit(f"[{args.command}] {result['failed']}")
        print(f"[{args.command}] all {len(SERVER_MODULES)} server modules and bench_serving import as if on an H100 "
              f"({len(result['modules'])} modules; sgl_kernel from {result['sgl_kernel']})")


if __name__ == "__main__":
    main()
