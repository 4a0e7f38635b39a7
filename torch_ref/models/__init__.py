"""The model families, one module each; importing this package registers them all."""
from . import adabin, addernet, bimlp, ghostnetv2, resnet, vanillanet, vig, vit  # noqa: F401

__all__ = ["adabin", "addernet", "bimlp", "ghostnetv2", "resnet", "vanillanet", "vig", "vit"]
