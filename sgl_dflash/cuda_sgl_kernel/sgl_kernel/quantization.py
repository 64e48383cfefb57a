"""``sgl_kernel.quantization`` stand-in: GGUF ops SGLang imports at module level; none is provided."""

from . import not_provided

ggml_dequantize = not_provided(__name__, "ggml_dequantize")
ggml_moe_a8 = not_provided(__name__, "ggml_moe_a8")
ggml_mul_mat_a8 = not_provided(__name__, "ggml_mul_mat_a8")
ggml_mul_mat_vec_a8 = not_provided(__name__, "ggml_mul_mat_vec_a8")
