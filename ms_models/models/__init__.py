"""The model families, one module each; importing this package registers them all."""
from . import adabin, addernet, beit, bimlp, convnextv2, ghostnetv2, resnet, swin, vanillanet, vig, vit  # noqa: F401

__all__ = ["adabin", "addernet", "beit", "bimlp", "convnextv2", "ghostnetv2", "resnet", "swin", "vanillanet", "vig",
           "vit"]
