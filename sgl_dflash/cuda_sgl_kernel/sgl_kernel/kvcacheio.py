"""``sgl_kernel.kvcacheio`` stand-in: hierarchical-cache transfer ops SGLang imports at module level.

None is provided: the hierarchical (host-memory) KV cache needs the real wheel.
"""

from . import not_provided

_NAMES = (
    "transfer_kv_all_layer", "transfer_kv_all_layer_direct_lf_pf", "transfer_kv_all_layer_lf_pf",
    "transfer_kv_all_layer_lf_ph", "transfer_kv_all_layer_mla", "transfer_kv_all_layer_mla_lf_pf",
    "transfer_kv_direct", "transfer_kv_per_layer", "transfer_kv_per_layer_direct_pf_lf",
    "transfer_kv_per_layer_mla", "transfer_kv_per_layer_mla_pf_lf", "transfer_kv_per_layer_pf_lf",
    "transfer_kv_per_layer_ph_lf",
)
globals().update({name: not_provided(__name__, name) for name in _NAMES})
