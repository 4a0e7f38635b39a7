"""The MindSpore model registry (same names as ``torch_ref``; cfgs from :mod:`specs`)."""
from specs import ModelRegistry

registry = ModelRegistry("mindspore")
