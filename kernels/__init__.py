"""Triton kernels of sgl-dflash (each with a plain-torch reference, tested under TRITON_INTERPRET=1)."""
