"""CPU stand-in for ``sgl_kernel.speculative``: importable, every op raises."""

from sgl_kernel import __getattr__  # noqa: F401  (same clear error for every name)
