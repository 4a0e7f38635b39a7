"""Training parity (``python -m convert parity --train-steps K``): K updates of the engine's own train step in
MindSpore GRAPH_MODE against the same updates in torch, from the same weights on the same batches.

* MindSpore: :mod:`ms_models.train` as a run builds it: ``create_loss``, ``create_optimizer`` (timm's parameter
  groups), ``build_train_network`` (the compiled :class:`~ms_models.train.step.TrainStep`), the per-step lr of
  ``specs.schedules.lr_per_step``, ``model.set_epoch(0, epochs)`` first.
* torch: :class:`TorchTrainStep`, the reference written here: the same loss (``F.cross_entropy`` with
  ``label_smoothing``), ``torch.optim.SGD`` (momentum, Nesterov, dampening 0) or ``torch.optim.AdamW`` over the
  parameter groups built in torch (:func:`torch_param_groups`: timm's rule, no weight decay for ``ndim <= 1`` and
  ``model.no_weight_decay()`` unless ``optimizer.filter_bias_and_bn`` is false), every group's lr set before each
  update to ``lr[t] * lr_scale``; run in float32 and, as the reference, in float64.

Both train with batch-statistics BN (running statistics compared too); dropout and drop path are off (the two
frameworks draw different masks).

Shared decisions. A train step is a discontinuous function of its inputs in three ways, and float32 rounding
differences between two valid kernels decide each differently now and then; the decision is then shared, re-recorded
from torch float32 at every step (the weights change), so that everything downstream compares at float32 tolerance:

* the forward's discontinuities, as in the forward parity (:mod:`convert.parity`): the kNN graph of graph models
  (torch's on the step's batch, its BN statistics put back, every max-relative maximum separated from its runner-up
  as in the registry gradient test: :func:`separated_graph`) and the outputs of step layers
  (:class:`convert.parity.SharedSteps`); torch float64 takes them through the ``graph`` argument and forced
  outputs, MindSpore through Parameters set before the step (:class:`GraphInput`, :class:`ForcedStep`: one compiled
  graph serves every step);
* the gradient's kinks (:class:`SharedKinks`: the slope change of PReLU / AdaBin's Maxout, BiMLP's quantiser clip):
  where torch's input lies within rounding of a kink, the others take torch's side of it;
* the weights: every update starts from torch float32's weights and BN statistics (MindSpore's and torch float64's
  are set to them; each optimizer keeps its own state over the K steps). Free-running weights drift apart by
  float32 rounding, and a discontinuity the drift crosses (an AdaBin weight within 1e-7 of its binarisation
  threshold at the next step, measured) changes the next loss by more than any float32 tolerance; with the shared
  start every step compares one update, and the optimizer's state (momentum buffers, Adam moments and step count)
  is still each framework's own, accumulated over the K steps.

MindSpore's own step outputs and kink sides are still computed: the elements where they differ from torch's are
counted (``flips``, ``kink_flips``) and must be float32 near ties (:data:`MAX_FLIPS`, :data:`NEAR_TIE`), or the
sharing would hide a real difference.

Reference and tolerance. Even from the same weights, one train step at test sizes is ill-conditioned in float32:
batch-statistics BN over few values per channel, the normalisation inside AdaBin's weight binariser, and the kinks of
ReLU / max-pool / hard-sigmoid (not shared: the gradient jumps where an input is within rounding of one) move torch
float32's own update by up to percents from float64's (measured: ``docs/training_optim.md``). Per tensor (weights
and BN statistics, after every update) MindSpore must be as close to torch float64 as torch float32 is, or within
the project's float32 tolerance: ``max|ms - t64| <= max(FACTOR * max|t32 - t64|, tol * max|t64|)``; the loss of
every step likewise (``|l_ms - l64| <= max(FACTOR * |l32 - l64|, tol * max(1, |l64|))``). A tensor with an exactly
zero gradient (its float64 update below :data:`NOISE_UPDATE` of its scale: a bias followed only by batch-statistics
BNs) has no float32 answer, its update is rounding noise in every framework: it is checked for size only
(:data:`NOISE_FACTOR`) and reported apart.
"""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

import torch_ref
from ms_models.context import execution_mode
from specs import check_input_size, get_model_cfg
from specs.errors import ConfigError
from specs.param_groups import group_with_matcher
from specs.schedules import lr_per_step

from .parity import FLIP, SharedSteps, step_layers

if TYPE_CHECKING:
    from ms_models.train.config import Config

__all__ = ["TRAIN_OPTIMIZERS", "TRAIN_TOL", "FACTOR", "NOISE_UPDATE", "NOISE_FACTOR", "MAX_FLIPS", "NEAR_TIE",
           "GRAPH_GAP", "SharedKinks", "kink_layers", "record_kink_inputs", "separated_graph", "separate_rows",
           "parity_config", "torch_param_groups", "TorchTrainStep", "GraphInput", "SharedValues", "ForcedStep",
           "ForcedSteps", "KinkInput", "TrainParityReport", "run_train_parity"]

TRAIN_OPTIMIZERS = ("sgd", "adamw")       # the engine's optimizers that torch.optim has
# MindSpore float32 may be FACTOR times as far from torch float64 as torch float32 is (two float32 kernels round
# differently, and each crosses other kinks: the same statistical allowance as the registry gradient test) ...
FACTOR = 4.0
# ... or this fraction of the tensor's (the loss's) scale, the project's float32 parity tolerance: whatever torch
# float32 reached by luck (observed: up to 3e-5, docs/training_optim.md). A formula error is far above it at the
# test's hyperparameters: weight decay on a BN scale of 1 moves it by lr * wd = 5e-4 per SGD step, a missing bias
# correction moves AdamW's first step by 2.2 lr (2.5 % of a 0.08 weight).
TRAIN_TOL = 1e-4
# A shared decision must be a float32 near tie: rare (a near tie within ~1e-6 of the scale hits ~1 element in
# 1e5; a wrong threshold, scale or rounding rule flips a large share, e.g. sign vs round-to-{-1,0,1}: ~1/3) ...
MAX_FLIPS = 1e-4
# ... and, for a kink, the reference input within this fraction of the layer's input scale (max |input|) of the
# kink (float32 forward rounding moves inputs by ~1e-6 of it).
NEAR_TIE = 1e-5
# The max-relative graph conv routes each node's and channel's gradient to the neighbour holding the maximum: a kink
# too. The shared graph is edited so that every maximum beats its runner-up by this fraction of the Grapher's key
# scale (the registry gradient test's GAP: float32 moves PViG-Ti's deepest keys by <= 4e-6 of it, so no rounding
# reverses a maximum); any index tensor is a valid shared graph.
GRAPH_GAP = 5e-5
# A trainable tensor whose float64 update is below this fraction of its scale has an exactly zero gradient (a bias
# followed only by batch-statistics BNs: BiMLP-S's stem moves by 1e-14 of its scale in float64): its float32 update
# is rounding noise in every framework (Adam normalises it to up to lr), so there is no float32 answer to be
# close to. Such a "noise tensor" is checked for size instead: MindSpore's update within NOISE_FACTOR times torch
# float32's (two noise samples from different summation orders; measured up to 4.4 times apart, BiMLP-S's
# ``patch_embed.act.move2.bias``), or the float32 tolerance of its scale. A formula error on them (e.g. weight
# decay, ``lr * wd * w``) shows on the tensors of the same group that do have a gradient.
NOISE_UPDATE = 1e-9
NOISE_FACTOR = 10.0


def parity_config(name: str, optimizer: str = "sgd", steps: int = 3, **optimizer_kwargs) -> "Config":
    """The config of a parity run: ``name``, ``optimizer`` with the test hyperparameters (SGD lr 0.01, momentum
    0.9; AdamW lr 1e-3, eps 1e-3; weight decay 0.05 both: every term of the update visible at the tolerance), a
    cosine schedule over ``steps`` updates (the lr changes at every step), plain cross-entropy, float32.

    AdamW's eps is 1e-3, not torch's 1e-8: at 1e-8 the update ``m / (sqrt(v) + eps)`` is a sign function of
    gradients near zero, and the gradients that are float32 cancellation noise (~1e-9; biases before a batch-
    statistics BN, whose exact gradient is 0) move their weights by up to lr in either framework, by different
    amounts (measured: 2 % of AdaBin ResNet-18's conv weights, torch float32 alike). At 1e-3 the update is smooth
    in the gradient, and eps's place (outside the bias-corrected root, where torch puts it) matters more."""
    from ms_models.train.config import config_from_dict
    opt = {"sgd": dict(name="sgd", lr=0.01, momentum=0.9), "adamw": dict(name="adamw", lr=1e-3, eps=1e-3)}
    if optimizer not in opt:
        raise ConfigError(f"train parity compares {' and '.join(TRAIN_OPTIMIZERS)} (torch.optim has them), "
                          f"not {optimizer!r}")
    cfg = get_model_cfg(name)
    return config_from_dict({"model": {"name": name, "num_classes": cfg.num_classes},
                             "data": {"image_size": cfg.test_input_size[-1]},
                             "optimizer": {**opt[optimizer], "weight_decay": 0.05, **optimizer_kwargs},
                             "schedule": {"name": "cosine"}, "train": {"epochs": steps}})


def _check_supported(cfg) -> None:
    """The settings the torch reference reproduces; anything else is a one-line ConfigError naming the key."""
    from ms_models.train.config import mixup_active
    t = cfg.train
    checks = (("optimizer.name", cfg.optimizer.name in TRAIN_OPTIMIZERS, " or ".join(TRAIN_OPTIMIZERS)),
              ("data.mixup", not mixup_active(cfg.data), "off (mixup / cutmix)"), ("train.loss", t.loss == "ce", "ce"),
              ("train.amp_level", t.amp_level == "O0", "O0"), ("train.loss_scale", t.loss_scale == "none", "none"),
              ("train.grad_clip", t.grad_clip is None, "null"), ("train.accumulate", t.accumulate == 1, "1"))
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"train parity: config key {key!r} must be {want} (the torch reference has only that)")


def no_drop_kwargs(name: str) -> dict[str, float]:
    """Constructor kwargs that switch dropout and drop path off, for the families whose constructor has them."""
    params = inspect.signature(torch_ref._registry.registry.model_class(name)).parameters
    return {k: 0.0 for k in ("drop_rate", "drop_path_rate") if k in params}


# --- the torch reference ----------------------------------------------------------------------------------------

def torch_param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None,
                       filter_bias_and_bn: bool = True) -> list[dict]:
    """timm's ``param_groups_weight_decay`` / ``param_groups_layer_decay`` for a torch model: no weight decay for
    ``ndim <= 1`` and ``model.no_weight_decay()`` (all decayed when ``filter_bias_and_bn`` is false, as
    ``torch.optim.SGD(model.parameters(), weight_decay=wd)``), ``lr_scale = layer_decay ** (layer_max - layer)``
    over ``model.group_matcher()``; frozen parameters left out."""
    skip = set(model.no_weight_decay()) if filter_bias_and_bn else set()
    layer_of, layer_max = {}, 0
    if layer_decay is not None:
        layers = group_with_matcher([n for n, _ in model.named_parameters()], model.group_matcher(coarse=False))
        layer_of = {n: i for i, names in enumerate(layers) for n in names}
        layer_max = len(layers) - 1
    groups: dict[tuple[int, bool], dict] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not filter_bias_and_bn or (p.ndim > 1 and n not in skip)
        layer = layer_of.get(n, layer_max)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": 1.0 if layer_decay is None else layer_decay ** (layer_max - layer)})
        group["params"].append(p)
        group["names"].append(n)
    return list(groups.values())


class TorchTrainStep:
    """The torch reference of the engine's train step: ``step(images, targets, graph=None) -> loss`` runs the model
    in training mode, ``F.cross_entropy(logits, targets, label_smoothing)``, backward, sets every group's lr to
    ``lr[t] * lr_scale`` (t: the update count) and steps ``torch.optim.SGD`` / ``torch.optim.AdamW``."""

    def __init__(self, model: torch.nn.Module, cfg, lr: np.ndarray):
        _check_supported(cfg)
        o = cfg.optimizer
        groups = torch_param_groups(model, o.weight_decay, o.layer_decay, o.filter_bias_and_bn)
        if o.name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=o.momentum, nesterov=o.nesterov)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=o.betas, eps=o.eps)
        self.model, self.lr, self.smoothing, self.updates = model, np.asarray(lr), cfg.data.smoothing, 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, graph=None) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(images) if graph is None else self.model(images, graph)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.smoothing)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lr[self.updates]) * group["lr_scale"]
        self.optimizer.step()
        self.updates += 1
        return loss.item()


# --- the shared decisions on the MindSpore side (GRAPH_MODE: values held in Parameters) -------------------------

class GraphInput(nn.Cell):
    """``model(x, graph)`` with the neighbour indices (one (B, N, k) tensor per Grapher) held in non-trainable
    Parameters ``shared_graph.<i>``: ``set(graph)`` before a step, one compiled graph for every step. The model's
    parameters keep their names."""

    def __init__(self, model: nn.Cell, graph: list[np.ndarray]):
        super().__init__(auto_prefix=False)
        self.model = model
        self.graph = ParameterTuple([Parameter(Tensor(g), name=f"shared_graph.{i}", requires_grad=False)
                                     for i, g in enumerate(graph)])

    def set(self, graph: list[np.ndarray]) -> None:
        for p, g in zip(self.graph, graph):
            p.set_data(Tensor(g))

    def construct(self, x):
        return self.model(x, self.graph)


class SharedValues:
    """The values shared into a MindSpore model at every step, in one flat float32 Parameter ``name``: one
    ``set_data`` per step, and one Parameter however many layers read a value (a train step treats non-trained
    float Parameters as running statistics, and a graph compiled over hundreds of them nests too deep). ``slot(key)``
    is the (start, stop, shape) a layer reads; ``set(values)`` writes new values of the same shapes."""

    def __init__(self, values: dict[str, np.ndarray], name: str):
        self.layout: dict[str, tuple[int, int, tuple]] = {}
        start = 0
        for key, v in values.items():
            self.layout[key] = (start, start + v.size, tuple(v.shape))
            start += v.size
        self.param = Parameter(Tensor(self._flat(values)), name=name, requires_grad=False)

    def _flat(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(values[k], np.float32).ravel() for k in self.layout])

    def slot(self, key: str) -> tuple[int, int, tuple]:
        return self.layout[key]

    def set(self, values: dict[str, np.ndarray]) -> None:
        self.param.set_data(Tensor(self._flat(values)))


class _SharedInput(nn.Cell):
    """Base of the wrappers: ``layer`` and its slot of a :class:`SharedValues` Parameter (``ref()``), and a bool
    Parameter ``flip`` where the wrapper records which elements MindSpore decided otherwise (last call)."""

    def __init__(self, layer: nn.Cell, values: SharedValues, key: str):
        super().__init__()
        self.layer, self.bank = layer, values.param
        self.start, self.stop, self.shape = values.slot(key)
        self.flip = Parameter(Tensor(np.zeros(self.shape, np.bool_)), name=f"{key}.shared_flip", requires_grad=False)

    def ref(self):
        return self.bank[self.start:self.stop].reshape(self.shape)


class ForcedStep(_SharedInput):
    """A step layer that outputs torch's value (its slot, set before each step) with its own gradient
    (``o + stop_gradient(ref - o)``); ``flip``: where its own output differs by a step (:func:`flip_mask`). Works in
    GRAPH_MODE and on cells with a custom ``bprop`` (a wrapper, not a hook: MindSpore runs no forward hook on
    those)."""

    def construct(self, x):
        o = self.layer(x)
        ref = self.ref()
        ops.assign(self.flip, ops.abs(o - ref) > FLIP * ops.maximum(ops.abs(ref).max(), 1e-12))
        return o + ops.stop_gradient(ref - o)


class KinkInput(_SharedInput):
    """A kink layer whose input takes torch's (its slot) where its own lies on another side of a kink (identity
    gradient); ``flip``: those elements."""

    def __init__(self, layer: nn.Cell, values: SharedValues, key: str, kinks: tuple[float, ...]):
        super().__init__(layer, values, key)
        self.kinks = kinks

    def construct(self, x):
        ref = self.ref()
        other = _other_side(x, ref, self.kinks)
        ops.assign(self.flip, other)
        return self.layer(x + ops.stop_gradient(ops.select(other, ref, x) - x))


def _wrap(model: nn.Cell, name: str, make) -> tuple[nn.Cell, str, nn.Cell, nn.Cell]:
    """Replace the cell ``name`` of ``model`` by ``make(cell)``; the cell's parameters keep their names (the
    wrapper would prefix them). Returns (parent, attribute, cell, wrapper) for :func:`_unwrap`."""
    cells = dict(model.cells_and_names())
    parent, _, child = name.rpartition(".")
    layer = cells[name]
    names = {id(p): p.name for p in layer.get_parameters()}
    wrapper = make(layer)
    names.update((id(p), p.name) for p in wrapper.get_parameters() if id(p) not in names)  # its own, as created
    if isinstance(cells[parent], nn.SequentialCell) and child.isdigit():
        cells[parent][int(child)] = wrapper        # also updates its cell_list, which construct runs
    else:
        setattr(cells[parent], child, wrapper)
    for p in wrapper.get_parameters():
        p.name = names[id(p)]
    return cells[parent], child, layer, wrapper


def _unwrap(parent: nn.Cell, child: str, layer: nn.Cell) -> None:
    names = {id(p): p.name for p in layer.get_parameters()}
    if isinstance(parent, nn.SequentialCell) and child.isdigit():
        parent[int(child)] = layer
    else:
        setattr(parent, child, layer)
    for p in layer.get_parameters():
        p.name = names[id(p)]


class ForcedSteps:
    """The step layers of a MindSpore model output torch's values, in GRAPH_MODE (the GRAPH_MODE counterpart of
    :meth:`convert.parity.SharedSteps.force`): every step layer is wrapped in a :class:`ForcedStep` reading
    ``outs[name]``; ``update(outs)`` before each step, ``flips()`` after it. A step layer that declares ``kinks``
    (its value steps among them: BiMLP's quantiser) is left to :class:`SharedKinks`: its input on torch's side of
    every step gives torch's value."""

    @staticmethod
    def names(model: nn.Cell) -> list[str]:
        return [n for n, layer in step_layers(model) if not getattr(layer, "kinks", None)]

    def __init__(self, model: nn.Cell, outs: dict[str, np.ndarray]):
        names = self.names(model)
        self.values = SharedValues({n: outs[n] for n in names}, "shared_steps.values")
        self.wrappers = {n: _wrap(model, n, lambda layer, n=n: ForcedStep(layer, self.values, n))[3] for n in names}
        self.total = sum(outs[n].size for n in names)

    def update(self, outs: dict[str, np.ndarray]) -> None:
        self.values.set({n: outs[n] for n in self.wrappers})

    def flips(self) -> int:
        return sum(int(w.flip.asnumpy().sum()) for w in self.wrappers.values())


# --- shared gradient decisions: kinks (moved here from tests/helpers.py; the gradient tests import them) --------

_RELU = (torch.nn.ReLU, nn.ReLU)


def kink_layers(model, relu: bool = False) -> list[tuple[str, object, tuple[float, ...]]]:
    """(name, layer, kinks) of the layers of a torch module or MindSpore cell that declare ``kinks``: the inputs
    where their gradient steps (BiMLP's quantiser clip at +-1, and its value steps; PReLU's and AdaBin's
    Maxout's slope change at 0); with ``relu``, also the ReLU modules / cells (kink at 0; the names are mirrored
    across the frameworks; a functional ReLU is not reached)."""
    items = model.cells_and_names() if isinstance(model, nn.Cell) else model.named_modules()
    out = []
    for n, m in items:
        kinks = getattr(m, "kinks", None) or ((0.0,) if relu and isinstance(m, _RELU) else None)
        if kinks:
            out.append((n, m, kinks))
    return out


def record_kink_inputs(torch_model: torch.nn.Module, run, relu: bool = False) -> dict[str, np.ndarray]:
    """Inputs of ``torch_model``'s kink layers (:func:`kink_layers`; float32 copies) while ``run()`` runs. A layer
    called more than once (one ReLU module for every activation of a block, as AdderNet's ResNet-20 has) is left
    out: one reference cannot stand for several inputs, so its kinks are not shared."""
    ins: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}

    def hook(_m, args, name):
        ins[name] = args[0].detach().float().numpy().copy()
        calls[name] = calls.get(name, 0) + 1

    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: hook(_m, a, n))
               for n, m, _ in kink_layers(torch_model, relu)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {n: v for n, v in ins.items() if calls[n] == 1}


def _other_side(x, ref, kinks):
    """Elements of ``x`` on another side of some kink than ``ref`` (numpy, torch or MindSpore tensors). A value
    exactly at a kink is a side of its own: the layers put it on either side (round half to even maps -0.5 up
    to 0 and +0.5 down to 0, the straight-through clip keeps +-1 inside), so a reference exactly at a kink
    (float32 hits one now and then: BiMLP-S's ~1e7 quantiser inputs per step, measured at -0.5) is taken as
    it is, and ``x`` exactly at one takes the reference's side."""
    differ = ((x > kinks[0]) != (ref > kinks[0])) | ((x < kinks[0]) != (ref < kinks[0]))
    for k in kinks[1:]:
        differ = differ | ((x > k) != (ref > k)) | ((x < k) != (ref < k))
    return differ


class SharedKinks:
    """Shared gradient decisions, the companion of :class:`convert.parity.SharedSteps` (which shares step
    *outputs*): where an input lies within float32 rounding of a kink, the two frameworks pick different slopes
    and a gradient moves by percents. ``force(model, inputs)`` makes every kink layer of a torch module or
    MindSpore cell (PyNative or GRAPH_MODE; MindSpore layers are wrapped in :class:`KinkInput`, since MindSpore
    runs no forward hook on a cell with a custom ``bprop``) take the reference input ``inputs[name]`` where its own
    lies on another side of a kink; the forward value moves by that rounding only. ``update(inputs)`` gives the
    MindSpore wrappers new references (no recompile) and ``snapshot()`` counts their last run; ``flipped`` /
    ``worst``: how many elements were forced in the forced models' runs, and the largest distance of their
    reference input from the kink relative to the layer's input scale. ``remove()`` undoes ``force`` and keeps
    the counts. ``relu``: ReLUs are kink layers too (:func:`kink_layers`)."""

    def __init__(self, relu: bool = False):
        self.relu = relu
        self._seen: list[tuple[np.ndarray, np.ndarray, tuple]] = []      # (forced elements, reference, kinks)
        self._wrapped: list[tuple[str, nn.Cell, str, nn.Cell, KinkInput]] = []   # name, parent, child, layer, wrapper
        self._handles: list = []
        self._inputs: dict[str, np.ndarray] = {}

    def force(self, model, inputs: dict[str, np.ndarray]) -> None:
        if not isinstance(model, nn.Cell):
            for name, layer, kinks in kink_layers(model, self.relu):
                if name not in inputs:      # did not run in the reference (AdaBin ImageNet's unused Maxout)
                    continue

                def hook(_m, args, ref=inputs[name], kinks=kinks):
                    x, r = args[0], torch.from_numpy(ref).to(args[0].dtype)
                    other = _other_side(x, r, kinks)
                    self._seen.append((other.numpy(), ref, kinks))
                    return (x + (torch.where(other, r, x) - x).detach(), *args[1:])
                self._handles.append(layer.register_forward_pre_hook(hook))
            return
        layers = [(n, k) for n, _, k in kink_layers(model, self.relu) if n in inputs]
        if not layers:
            return
        values = SharedValues({n: inputs[n] for n, _ in layers}, "shared_kinks.values")
        for name, kinks in layers:
            parent, child, layer, wrapper = _wrap(model, name,
                                                  lambda cell, n=name, k=kinks: KinkInput(cell, values, n, k))
            self._wrapped.append((name, parent, child, layer, wrapper))
        self._values, self._inputs = values, inputs

    def update(self, inputs: dict[str, np.ndarray]) -> None:
        if self._wrapped:
            self._values.set(inputs)
            self._inputs = inputs

    def snapshot(self) -> None:
        for name, *_, wrapper in self._wrapped:
            self._seen.append((wrapper.flip.asnumpy().copy(), self._inputs[name], wrapper.kinks))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.snapshot()
        for _, parent, child, layer, _ in self._wrapped:
            _unwrap(parent, child, layer)
        self._wrapped, self._handles = [], []

    def _distances(self) -> list[np.ndarray]:
        out = []
        for forced, ref, kinks in self._seen:
            ref = ref.astype(np.float64)
            dist = np.min([np.abs(ref[forced] - k) for k in kinks], axis=0) if forced.any() else np.zeros(0)
            out.append(dist / max(np.abs(ref).max(), 1e-12))
        return out

    @property
    def flipped(self) -> int:
        return sum(int(forced.sum()) for forced, _, _ in self._seen)

    @property
    def total(self) -> int:
        return sum(ref.size for _, ref, _ in self._seen)

    @property
    def worst(self) -> float:
        return max((float(d.max()) for d in self._distances() if d.size), default=0.0)


# --- shared graph with separated maxima (moved here from tests/helpers.py; the gradient tests import it) ----

def separated_graph(model: torch.nn.Module, x: np.ndarray, margin: float) -> list[torch.Tensor]:
    """The neighbour indices a ViG ``model`` computes on ``x`` (like ``graph_indices``), with no near-tied
    max-relative maximum.

    A max-relative graph conv takes, per node and channel, the largest of its neighbours' key values; where
    the two largest are closer than float32 rounding, frameworks (or two valid torch kernels) pick different
    neighbours and the gradient routed back jumps by percents (the registry gradient test, the train parity). Here every
    node whose two largest neighbour keys in some channel differ by less than ``margin`` times the largest key
    magnitude of that Grapher gets the runner-up replaced by other key nodes until every channel of its row is
    separated; later Graphers compute their kNN on features produced with the edited earlier rows. Any index
    tensor is a valid shared graph; this one makes every maximum unambiguous.
    """
    from torch_ref.models.vig import DilatedKnnGraph
    edited: list[torch.Tensor] = []

    def hook(_module, args, idx):
        keys = args[1].numpy()                                     # (B, C, M)
        tol = margin * np.abs(keys).max()
        edited.append(torch.from_numpy(np.stack([separate_rows(i, k.T, tol) for i, k in zip(idx.numpy(), keys)])))
        return edited[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DilatedKnnGraph)]
    try:
        with torch.no_grad():
            model.forward_features(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return edited


def _gaps(keys: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Per channel: largest minus second-largest key value among the neighbours ``row``."""
    top = np.sort(keys[row], axis=0)
    return top[-1] - top[-2]


def separate_rows(idx: np.ndarray, keys: np.ndarray, tol: float) -> np.ndarray:
    """``idx`` (N, k) neighbour rows into ``keys`` (M, C): in every row with near ties, a neighbour of the
    closest one is replaced by the first other key node that leaves fewer near-tied channels, until none. The
    runner-up is tried first, then the leader, then the row's other neighbours: removing the runner-up of one
    channel can uncover a near tie of another channel that it led (measured: ViG-Ti's centre node, the runner-up
    of one channel and the leader of another whose next two keys are within the gap), and then removing the
    leader separates the first channel without touching the second."""
    idx = idx.copy()
    top = np.sort(keys[idx], axis=1)                               # (N, k, C)
    others = np.arange(len(keys))
    for n in np.flatnonzero((top[:, -1] - top[:, -2]).min(axis=1) < tol):
        row = idx[n]
        gaps = _gaps(keys, row)
        while gaps.min() < tol:
            order = np.argsort(keys[row, gaps.argmin()])
            positions = [int(order[-2]), int(order[-1])] + [int(i) for i in order[-3::-1]]
            for pos, cand in ((p, c) for p in positions for c in np.setdiff1d(others, row)):
                trial = row.copy()
                trial[pos] = cand
                trial_gaps = _gaps(keys, trial)
                if (trial_gaps < tol).sum() < (gaps < tol).sum():
                    row, gaps = trial, trial_gaps
                    break
            else:
                raise ValueError(f"no replacement separates node {n}'s neighbour maxima by {tol:.1e}")
        idx[n] = row
    return idx


# --- the comparison ---------------------------------------------------------------------------------------------

@dataclass
class StepRow:
    """One update: the step's losses (torch float32, MindSpore, torch float64), and after it the tensor with the
    largest MindSpore vs torch float32 difference relative to its scale (``rel``), torch float32's own distance
    from float64 there (``rel32``), the worst ratio of MindSpore's error to its bound over all tensors, and the
    size of the step (``update``)."""

    step: int
    lr: float
    loss_torch: float
    loss_ms: float
    loss_f64: float
    loss_ok: bool
    worst: str
    rel: float
    rel32: float
    worst_bound: str
    ratio: float
    update: float = 0.0          # median over the trainable tensors of max|torch update| / max|weight|
    flips: int = 0               # step-layer output elements where MindSpore's own value differs from torch's
    kink_flips: int = 0          # kink-layer input elements MindSpore had on another side of a kink than torch
    noise: int = 0               # noise tensors (:data:`NOISE_UPDATE`): left out of the columns above
    noise_ratio: float = 0.0     # their worst ratio of MindSpore's update to its bound (:data:`NOISE_FACTOR`)

    @property
    def ok(self) -> bool:
        return self.loss_ok and self.ratio <= 1.0 and self.noise_ratio <= 1.0


@dataclass
class TrainParityReport:
    model: str
    optimizer: str
    input_shape: tuple
    tol: float
    factor: float
    shared: list[str] = field(default_factory=list)    # "graph", "steps": the decisions fed from torch
    rows: list[StepRow] = field(default_factory=list)
    step_outputs: int = 0                               # step-layer output elements per step (flip count base)
    kink_inputs: int = 0                                # kink-layer input elements per step
    kink_worst: float = 0.0                             # largest distance of a shared kink side from its kink

    @property
    def shared_ok(self) -> bool:
        """The shared decisions were float32 near ties: rare (:data:`MAX_FLIPS` of the elements) and, for kinks,
        within :data:`NEAR_TIE` of the kink (anything else is a real difference that sharing would hide)."""
        n = max(len(self.rows), 1)
        return (sum(r.flips for r in self.rows) <= MAX_FLIPS * self.step_outputs * n
                and sum(r.kink_flips for r in self.rows) <= MAX_FLIPS * self.kink_inputs * n
                and self.kink_worst <= NEAR_TIE)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows) and self.shared_ok

    @property
    def max_rel(self) -> float:
        """The largest MindSpore vs torch float32 difference over every tensor, relative to its scale, after the
        last update (the parity table's figure)."""
        return self.rows[-1].rel if self.rows else float("inf")

    @property
    def max_loss_diff(self) -> float:
        return max((abs(r.loss_ms - r.loss_torch) for r in self.rows), default=float("inf"))

    def table(self) -> str:
        shared = f"; shared from torch float32 at every step: {', '.join(self.shared)}" if self.shared else ""
        head = (f"{'step':>4} {'lr':>9} {'loss torch':>12} {'loss ms':>12} {'|diff|':>9}  "
                f"{'tensor with the largest rel diff':<44} {'rel':>8} {'t32-t64':>8} {'err/bound':>9} {'update':>8}")
        if "steps" in self.shared or "kinks" in self.shared:
            head += f" {'flips':>7} {'kinks':>7}"
        rows = [f"{self.model} {self.optimizer}, input {self.input_shape}, MindSpore GRAPH_MODE vs torch{shared}",
                head, "-" * len(head)]
        for r in self.rows:
            mark = "" if r.ok else ("  <-- loss" if not r.loss_ok else
                                    f"  <-- {r.worst_bound}" if r.ratio > 1.0 else "  <-- noise tensor")
            flips = f" {r.flips:>7} {r.kink_flips:>7}" if "steps" in self.shared or "kinks" in self.shared else ""
            rows.append(f"{r.step:>4} {r.lr:>9.3g} {r.loss_torch:>12.7g} {r.loss_ms:>12.7g} "
                        f"{abs(r.loss_ms - r.loss_torch):>9.2g}  {r.worst:<44} {r.rel:>8.2g} {r.rel32:>8.2g} "
                        f"{r.ratio:>9.2g} {r.update:>8.2g}{flips}{mark}")
        rows.append(f"rel: max|ms - torch| / max|torch| per tensor (weights and BN statistics); bound per tensor and "
                    f"loss: max({self.factor:g} x torch float32's distance from torch float64, {self.tol:g} of its "
                    f"scale); err/bound: the worst tensor's ratio; update: the step's median max|torch update| / "
                    f"max|weight| over the trainable tensors")
        noise = max((r.noise for r in self.rows), default=0)
        if noise:
            rows.append(f"noise tensors (left out above): {noise} per step at most, whose float64 update is below "
                        f"{NOISE_UPDATE:g} of their scale (exact gradient 0: float32 updates are rounding noise); "
                        f"MindSpore's update within {NOISE_FACTOR:g} x torch float32's: worst ratio to that "
                        f"{max(r.noise_ratio for r in self.rows):.2g}")
        if "steps" in self.shared or "kinks" in self.shared:
            rows.append(f"flips: of {self.step_outputs} step-layer outputs, MindSpore's own value differs; kinks: of "
                        f"{self.kink_inputs} kink-layer inputs, MindSpore's on another side (largest distance "
                        f"{self.kink_worst:.2g} of the input scale); allowed: {MAX_FLIPS:g} of them, within "
                        f"{NEAR_TIE:g}")
        return "\n".join(rows + [f"{'PASS' if self.ok else 'FAIL'}: {len(self.rows)} updates"])

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"ok": self.ok}, indent=1)


def _rel(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max()) / scale if a.size else 0.0


def _build(name: str, checkpoint: str | None, seed: int, size: tuple[int, int]) -> torch.nn.Module:
    from torch_ref.testing import deterministic_weights
    from .api import torch_model_from
    if checkpoint is not None:
        return torch_model_from(name, checkpoint, **no_drop_kwargs(name))
    torch.manual_seed(seed)
    return deterministic_weights(torch_ref.create_model(name, **no_drop_kwargs(name)), seed=seed,
                                 input_size=min(size))


def _torch_graph(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The kNN graph ``model`` builds in its training-mode forward of ``x``, every max-relative maximum separated
    by :data:`GRAPH_GAP` (:func:`separated_graph`); its BN statistics put back."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    graph = separated_graph(model, x.numpy(), GRAPH_GAP)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    return graph


def run_train_parity(name: str, optimizer: str = "sgd", steps: int = 3, checkpoint: str | None = None,
                     input_size: int | None = None, batch: int = 4, seed: int = 0, tol: float = TRAIN_TOL,
                     graph: str = "shared", shared_steps: str = "shared", cfg=None) -> TrainParityReport:
    """``steps`` updates of ``name`` in MindSpore GRAPH_MODE (the engine's train step) and in torch float32 and
    float64 (:class:`TorchTrainStep`), from the given or deterministic weights on seeded batches of ``batch``
    images at ``input_size`` (default: the cfg's ``test_input_size``) and random labels; compared after every
    update (module docstring). ``cfg``: a training ``Config`` (default :func:`parity_config` of ``optimizer``).
    ``graph`` / ``shared_steps``: ``'shared'`` feeds torch's kNN graph / step outputs to the other runs,
    ``'free'`` lets MindSpore decide itself (torch float64 still takes torch float32's)."""
    from ms_models.train.losses import create_loss
    from ms_models.train.optim import create_optimizer
    from ms_models.train.step import build_train_network
    from .api import ms_twin, name_map

    for arg, value in (("graph", graph), ("steps", shared_steps)):
        if value not in ("shared", "free"):
            raise ValueError(f"{arg} must be 'shared' or 'free', not {value!r}")
    cfg = parity_config(name, optimizer, steps) if cfg is None else cfg
    _check_supported(cfg)
    model_cfg = get_model_cfg(name)
    h, w = check_input_size(model_cfg, input_size or model_cfg.test_input_size[-2:])
    lr = lr_per_step(cfg.schedule, cfg.optimizer.lr, max(cfg.train.epochs, steps), 1)    # one update per "epoch"

    t32 = _build(name, checkpoint, seed, (h, w))
    classes = t32.pretrained_cfg.num_classes
    t64 = copy.deepcopy(t32).double()
    rs = np.random.RandomState(seed + 1)
    xs = rs.randn(steps, batch, 3, h, w).astype(np.float32)
    ys = rs.randint(0, classes, (steps, batch))
    nm = name_map(name, num_classes=classes).ms_to_torch
    steps_t32, steps_t64 = TorchTrainStep(t32, cfg, lr), TorchTrainStep(t64, cfg, lr)
    for model in (t32, t64):
        model.set_epoch(0, cfg.train.epochs)
    is_graph = hasattr(t32, "graph_indices")
    report = TrainParityReport(name, cfg.optimizer.name, (batch, 3, h, w), tol, FACTOR)

    with execution_mode(ms.GRAPH_MODE):
        mm = ms_twin(t32, ms.GRAPH_MODE, **no_drop_kwargs(name))
        mm.set_epoch(0, cfg.train.epochs)
        # the optimizer's groups from the model as the engine has it: the wrappers below change structural names
        # (no_weight_decay() patterns), not parameter names
        optimizer = create_optimizer(mm, cfg.optimizer, lr[:steps])
        ms_step, feed, forced, ms_kinks = None, None, None, SharedKinks(relu=True)
        for t in range(steps):
            x, y = torch.from_numpy(xs[t]), torch.from_numpy(ys[t])
            g = _torch_graph(t32, x) if is_graph else None
            start = {k: v.detach().clone() for k, v in t32.state_dict().items()}
            loss32, outs, kinks = _recorded(steps_t32, x, y, g)
            _load_torch(t64, start)
            loss64 = _forced(steps_t64, x.double(), y, g, outs, kinks)
            _load_ms(mm, start, nm)
            if ms_step is None:                 # built once the first step has shown the decisions' shapes
                network = mm
                if is_graph and graph == "shared":
                    network = feed = GraphInput(mm, [v.numpy() for v in g])
                    report.shared.append("graph")
                if outs and shared_steps == "shared" and ForcedSteps.names(mm):
                    forced = ForcedSteps(mm, outs)
                    report.shared.append("steps")
                    report.step_outputs = forced.total
                if kinks:
                    ms_kinks.force(mm, kinks)
                    report.shared.append("kinks")
                ms_step = build_train_network(network, create_loss(cfg), optimizer, cfg.train)
            if feed is not None:
                feed.set([v.numpy() for v in g])
            if forced is not None:
                forced.update(outs)
            ms_kinks.update(kinks)
            loss_ms = float(ms_step(Tensor(xs[t]), Tensor(ys[t].astype(np.int32))).asnumpy())
            before = ms_kinks.flipped
            ms_kinks.snapshot()
            row = _compare(t, float(lr[t]), (loss32, loss_ms, loss64), mm, (start, t32, t64), nm, tol)
            row.flips = forced.flips() if forced is not None else 0
            row.kink_flips = ms_kinks.flipped - before
            report.rows.append(row)
        report.kink_inputs = ms_kinks.total // max(steps, 1)
        report.kink_worst = ms_kinks.worst
    return report


def _load_torch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model``'s weights and buffers set to ``state`` (torch float32's at the start of the step), in place: the
    optimizer keeps its own state."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(state[k])


def _load_ms(model: nn.Cell, state: dict[str, torch.Tensor], ms_to_torch: dict[str, str]) -> None:
    """Every MindSpore parameter of ``model`` with a torch key set to ``state`` (weights and BN statistics; the
    MindSpore-only schedule parameters keep their values)."""
    for p in model.get_parameters():
        key = ms_to_torch.get(p.name)
        if key is not None:
            p.set_data(Tensor(state[key].numpy()))


def _recorded(step: TorchTrainStep, x, y, graph) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One torch float32 update, with the outputs of its step layers and the inputs of its kink layers."""
    watch = SharedSteps()
    watch.watch(step.model)
    kinks: dict[str, np.ndarray] = {}
    try:
        loss = [None]
        kinks = record_kink_inputs(step.model, lambda: loss.__setitem__(0, step(x, y, graph)), relu=True)
    finally:
        watch.remove()
    return loss[0], watch.outputs, kinks


def _forced(step: TorchTrainStep, x, y, graph, outs: dict[str, np.ndarray], kinks: dict[str, np.ndarray]) -> float:
    """One torch update that takes the recorded step outputs and kink sides."""
    steps, shared_kinks = SharedSteps(), SharedKinks(relu=True)
    steps.force(step.model, outs)
    shared_kinks.force(step.model, kinks)
    try:
        return step(x, y, graph)
    finally:
        steps.remove()
        shared_kinks.remove()


def _compare(t: int, lr: float, losses: tuple[float, float, float], mm, torch_states: tuple, nm: dict[str, str],
             tol: float) -> StepRow:
    """The row of update ``t``: losses, and every MindSpore tensor with a torch key against torch's
    (``torch_states``: the state at the start of the step, the float32 and the float64 model after it)."""
    loss32, loss_ms, loss64 = losses
    start, t32, t64 = torch_states
    loss_ok = abs(loss_ms - loss64) <= max(FACTOR * abs(loss32 - loss64), tol * max(1.0, abs(loss64)))
    s32, s64 = t32.state_dict(), t64.state_dict()
    worst, rel, rel32, worst_bound, ratio, moved = "", -1.0, 0.0, "", -1.0, []
    noise, noise_ratio = 0, 0.0
    for p in mm.get_parameters():
        key = nm.get(p.name)
        if key is None:
            continue
        got, a, b = p.asnumpy(), s32[key].detach().numpy(), s64[key].detach().numpy()
        scale64 = max(float(np.abs(b).max(initial=0.0)), 1e-30)
        if p.requires_grad:
            before = start[key].numpy()
            moved.append(_rel(a, before, max(float(np.abs(before).max(initial=0.0)), 1e-30)))
            if a.size and _rel(b, before, scale64) <= NOISE_UPDATE:
                noise += 1
                noise_ratio = max(noise_ratio, _rel(got, before, scale64)
                                  / max(NOISE_FACTOR * _rel(a, before, scale64), tol))
                continue
        err, err32 = _rel(got, b, scale64), _rel(a, b, scale64)
        r = err / max(FACTOR * err32, tol)
        if r > ratio:
            worst_bound, ratio = key, r
        d = _rel(got, a, max(float(np.abs(a).max(initial=0.0)), 1e-30))
        if d > rel:
            worst, rel, rel32 = key, d, err32
    return StepRow(t + 1, lr, loss32, loss_ms, loss64, loss_ok, worst, rel, rel32, worst_bound, ratio,
                   float(np.median(moved)) if moved else 0.0, noise=noise, noise_ratio=noise_ratio)
