"""``sgl_kernel.utils`` stand-in: the one helper SGLang's attention backends import."""

import torch


def is_arch_support_pdl() -> bool:
    """Programmatic dependent launch needs Hopper (compute capability 9) or newer."""
    if not torch.cuda.is_available() or getattr(torch.version, "hip", None):
        return False
    return torch.cuda.get_device_capability()[0] >= 9
