"""SGLang plugin entry point (group ``sglang.srt.plugins``)."""

from __future__ import annotations


def register() -> None:
    from sgl_dflash import cpu_support

    # First: the modules below import SGLang pieces that import sgl_kernel.
    if cpu_support.cpu_engine_requested():
        cpu_support.install_sgl_kernel_stand_in()
    from sgl_dflash import algorithm, sglang_patches

    sglang_patches.register_common()
    if cpu_support.cpu_engine_requested():
        sglang_patches.register_cpu()
    algorithm.register()
