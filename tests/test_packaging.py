"""`pip wheel .` builds without setuptools warnings, and the wheel holds what the plugin needs at run time.

The GPU kit installs this repo with pip (launch/gpu_env.sh), so whatever the
wheel lacks is missing there: the kernels (top-level kernels/, shipped as
sgl_dflash.kernels), the shipped tiny pair, both sgl_kernel stand-ins, and the
plugin's entry point.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_builds_quietly_and_holds_kernels_assets_and_stand_ins(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, check=True)
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("sgl_dflash-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in [*(REPO / "kernels").glob("*.py")]:
        assert f"sgl_dflash/kernels/{source.name}" in names
    for folder in ("assets", "cpu_sgl_kernel", "cuda_sgl_kernel"):
        tracked = [p for p in (REPO / "sgl_dflash" / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert tracked and all(f"sgl_dflash/{p.relative_to(REPO / 'sgl_dflash')}" in names for p in tracked)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "sgl_dflash = sgl_dflash.plugin:register" in zipfile.ZipFile(wheel).read(entry_points).decode()
