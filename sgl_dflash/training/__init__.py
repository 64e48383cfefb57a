"""Training: the tiny target LM and DFlash drafters (``python -m sgl_dflash.train``)."""
