"""sgl-dflash: DFlash block-diffusion speculative decoding as an SGLang plugin."""

ALGORITHM_NAME = "SGL_DFLASH"
