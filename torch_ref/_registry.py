"""The PyTorch model registry (same names as ``ms_models``; cfgs from :mod:`specs`)."""
from specs import ModelRegistry

registry = ModelRegistry("torch")
