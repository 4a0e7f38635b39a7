"""Training and compression methods, one module each (mirrors ``torch_ref/methods``): ``quantize`` (AdderNet
post-training quantization, arXiv 2212.10200). Distillation, masked image modeling and domain adaptation
land here beside it."""
