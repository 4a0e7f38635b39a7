"""Optimizers for the training engine: timm's parameter groups on MindSpore optimizers, per-step learning rate.

:func:`param_groups` follows timm ``param_groups_weight_decay`` / ``param_groups_layer_decay``
(``timm/optim/_param_groups.py``): no weight decay for parameters with ``ndim <= 1`` (norms, biases, scalars) or
named in ``model.no_weight_decay()``; with ``layer_decay``, the layers of ``model.group_matcher(coarse=False)``
(:func:`specs.param_groups.group_with_matcher`) get ``lr_scale = layer_decay ** (layer_max - layer_id)`` (head 1).
Frozen parameters (``requires_grad=False``) are left out.

Which MindSpore optimizer each name uses (the maths checked against torch / timm in ``tests/train/test_optim.py``;
``docs/training_optim.md`` lists every difference):

- ``sgd``: :class:`mindspore.nn.SGD` (torch ``SGD``: ``dampening=0``, L2 weight decay, Nesterov; not
  ``nn.Momentum``, whose CPU kernel ignores ``use_nesterov`` in MindSpore 2.8);
- ``adamw``: :class:`AdamW`, written here: ``mindspore.nn.AdamWeightDecay`` has no bias correction and
  ``mindspore.experimental.optim.AdamW`` takes no per-step learning rate;
- ``lamb``: :class:`Lamb`, written here: timm ``Lamb`` clips the global gradient norm to 1 and skips the trust
  ratio for parameters without weight decay, ``mindspore.nn.Lamb`` does neither;
- ``rmsprop``: :class:`RMSpropTF`, written here (timm ``RMSpropTF``: square average initialised to ones, eps
  inside the square root, learning rate inside the momentum buffer): ``mindspore.nn.RMSProp`` means the same,
  but its CPU kernel (MindSpore 2.8) adds eps outside the square root on the vectorised part of a tensor.

Every optimizer takes the per-step learning rate as a Tensor indexed by its ``global_step`` Parameter (the
update count), so saving the optimizer's parameters with the model restores the schedule position.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor, jit, nn, ops

from specs.errors import ConfigError
from specs.param_groups import group_with_matcher

from .config import OptimizerConfig

__all__ = ["AdamW", "Lamb", "RMSpropTF", "param_groups", "create_optimizer"]

_ONE = Tensor(1.0, ms.float32)


def param_groups(model: nn.Cell, weight_decay: float, layer_decay: float | None = None,
                 filter_bias_and_bn: bool = True) -> list[dict[str, Any]]:
    """timm's parameter groups for ``model``'s trainable parameters: dicts with ``params`` (Parameters in model
    order), ``names``, ``weight_decay`` (0 for ``ndim <= 1`` and ``model.no_weight_decay()``; with
    ``filter_bias_and_bn=False`` every parameter decays, as timm's flag of that name and ``torch.optim.SGD(
    model.parameters(), weight_decay=wd)`` do) and ``lr_scale`` (1, or ``layer_decay ** (layer_max - layer_id)``
    with the layers of ``model.group_matcher()``, counted over all parameters like timm). One group per
    (layer, decay) pair, in order of first appearance."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layer_of: dict[str, int] = {}
    layer_max = 0
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(f"optimizer.layer_decay needs a model with group_matcher(), "
                              f"{type(model).__name__} has none")
        layers = group_with_matcher([p.name for p in model.get_parameters()], model.group_matcher(coarse=False))
        layer_of = {name: i for i, names in enumerate(layers) for name in names}
        layer_max = len(layers) - 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for p in model.trainable_params():
        decay = not filter_bias_and_bn or (p.ndim > 1 and p.name not in skip)
        layer = layer_of.get(p.name, layer_max)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "weight_decay": float(weight_decay) if decay else 0.0,
            "lr_scale": 1.0 if layer_decay is None else float(layer_decay) ** (layer_max - layer)})
        group["params"].append(p)
        group["names"].append(p.name)
    return list(groups.values())


def create_optimizer(model: nn.Cell, opt_cfg: OptimizerConfig, lr: np.ndarray | float,
                     lr_mult: Mapping[str, float] | None = None) -> nn.Optimizer:
    """The optimizer ``opt_cfg.name`` over :func:`param_groups` of ``model`` with learning rate ``lr`` (one value
    per update, e.g. :func:`specs.schedules.lr_per_step`, times each group's ``lr_scale``; or a constant).
    ``lr_mult``: a further factor per parameter name (missing names: 1), as the ``lr_mult`` of CAN-style parameter
    groups (SFDA-DE's BN x10). ``optimizer.parameters`` keeps the order of ``model.trainable_params()``
    (gradients may come in either)."""
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim > 1 or lr.size == 0 or (lr < 0).any():
        raise ConfigError(f"the learning rate must be a non-negative number or 1-d array, got shape {lr.shape}")
    lr_mult = lr_mult or {}
    groups = []
    for g in param_groups(model, opt_cfg.weight_decay, opt_cfg.layer_decay, opt_cfg.filter_bias_and_bn):
        by_mult: dict[float, list] = {}
        for p in g["params"]:
            by_mult.setdefault(float(lr_mult.get(p.name, 1.0)), []).append(p)
        for mult, params in by_mult.items():
            group = {"params": params, "weight_decay": g["weight_decay"]}
            if opt_cfg.layer_decay is not None or mult != 1.0:
                group["lr"] = _lr(lr * np.float32(g["lr_scale"] * mult))
            groups.append(group)
    groups.append({"order_params": model.trainable_params()})
    learning_rate = _lr(lr)
    name = opt_cfg.name
    if name == "sgd":
        if opt_cfg.nesterov and opt_cfg.momentum <= 0:
            raise ConfigError("optimizer.nesterov needs optimizer.momentum > 0")
        return nn.SGD(groups, learning_rate, momentum=float(opt_cfg.momentum), nesterov=opt_cfg.nesterov)
    if name == "adamw":
        return AdamW(groups, learning_rate, betas=opt_cfg.betas, eps=opt_cfg.eps)
    if name == "lamb":
        return Lamb(groups, learning_rate, betas=opt_cfg.betas, eps=opt_cfg.eps)
    if name == "rmsprop":
        return RMSpropTF(groups, learning_rate, alpha=opt_cfg.alpha, eps=opt_cfg.eps, momentum=opt_cfg.momentum)
    raise ConfigError(f"unknown optimizer {name!r}: expected sgd, adamw, lamb or rmsprop")


def _lr(lr: np.ndarray) -> float | Tensor:
    """A constant as a float, a schedule as a 1-d float32 Tensor (MindSpore's dynamic learning rate)."""
    return float(lr) if lr.ndim == 0 else Tensor(lr, ms.float32)


_adamw_opt = ops.MultitypeFuncGraph("adamw_opt")
_lamb_opt = ops.MultitypeFuncGraph("lamb_opt")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_rmsprop_opt = ops.MultitypeFuncGraph("rmsprop_opt")


@_square_sum.register("Tensor")
def _square_sum_tensor(x):
    return ops.square(x.astype(ms.float32)).sum()


@_adamw_opt.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Bool")
def _adamw_step(head, lr, weight_decay, param, exp_avg, exp_avg_sq, grad, decay_flag):
    """One parameter of torch ``AdamW`` (``amsgrad=False``): decoupled decay, bias-corrected moments;
    ``head = (beta1, beta2, eps, 1 - beta1**t, sqrt(1 - beta2**t))``."""
    beta1, beta2, eps, bias1, bias2_sqrt = head
    next_param = param * (1.0 - lr * weight_decay) if decay_flag else param
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    v = beta2 * exp_avg_sq + (1.0 - beta2) * ops.square(grad)
    next_param = next_param - (lr / bias1) * m / (ops.sqrt(v) / bias2_sqrt + eps)
    ops.assign(exp_avg, m)
    ops.assign(exp_avg_sq, v)
    ops.assign(param, next_param)
    return True


@_lamb_opt.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Bool")
def _lamb_step(head, lr, weight_decay, param, exp_avg, exp_avg_sq, grad, decay_flag):
    """One parameter of timm ``Lamb`` (``_single_tensor_lamb``, defaults): the gradient divided by the global
    clip factor, Adam update, then (only with weight decay) L2 term and trust ratio ``|w| / |update|``;
    ``head = (beta1, beta2, eps, 1 - beta1**t, sqrt(1 - beta2**t), clip)``."""
    beta1, beta2, eps, bias1, bias2_sqrt, clip = head
    grad = grad / clip
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    v = beta2 * exp_avg_sq + (1.0 - beta2) * ops.square(grad)
    update = (m / bias1) / (ops.sqrt(v) / bias2_sqrt + eps)
    if decay_flag:
        update = update + weight_decay * param
        w_norm = ops.sqrt(ops.square(param).sum())
        u_norm = ops.sqrt(ops.square(update).sum())
        trust = ops.select(w_norm > 0, ops.select(u_norm > 0, w_norm / u_norm, _ONE), _ONE)
        update = update * trust
    ops.assign(exp_avg, m)
    ops.assign(exp_avg_sq, v)
    ops.assign(param, param - lr * update)
    return True


@_rmsprop_opt.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _rmsprop_step(alpha, eps, momentum, lr, param, square_avg, buf, grad):
    """One parameter of timm ``RMSpropTF`` (``lr_in_momentum=True``, not centered; the L2 term is already in
    ``grad``): ``sq += (g^2 - sq) * (1 - alpha)``; ``buf = momentum * buf + lr * g / sqrt(sq + eps)``; ``p -= buf``
    (without momentum the same with ``buf = 0`` before the step)."""
    sq = square_avg + (ops.square(grad) - square_avg) * (1.0 - alpha)
    next_buf = momentum * buf + lr * grad / ops.sqrt(sq + eps)
    ops.assign(square_avg, sq)
    ops.assign(buf, next_buf)
    ops.assign(param, param - next_buf)
    return True


class RMSpropTF(nn.Optimizer):
    """timm ``RMSpropTF`` (``timm/optim/rmsprop_tf.py``: TensorFlow-style RMSProp with L2 weight decay) as a
    MindSpore optimizer: square averages start at one (Parameters ``square_avg.<name>``), eps inside the square
    root, the learning rate accumulated in the momentum buffer (``momentum_buffer.<name>``)."""

    def __init__(self, params, learning_rate, alpha: float = 0.9, eps: float = 1e-10, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(learning_rate, params, weight_decay)
        if not (0.0 <= alpha <= 1.0 and eps >= 0.0 and momentum >= 0.0):
            raise ValueError(f"RMSpropTF needs alpha in [0, 1], eps >= 0 and momentum >= 0, got {alpha}, {eps}, "
                             f"{momentum}")
        self.alpha = Tensor(alpha, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.momentum = Tensor(momentum, ms.float32)
        self.square_avg = self._parameters.clone(prefix="square_avg", init="ones")
        self.momentum_buffer = self._parameters.clone(prefix="momentum_buffer", init="zeros")

    @jit
    def construct(self, gradients):
        gradients = self.decay_weight(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        if self.is_group_lr:
            return self.hyper_map(ops.partial(_rmsprop_opt, self.alpha, self.eps, self.momentum), lr,
                                  self._parameters, self.square_avg, self.momentum_buffer, gradients)
        return self.hyper_map(ops.partial(_rmsprop_opt, self.alpha, self.eps, self.momentum, lr),
                              self._parameters, self.square_avg, self.momentum_buffer, gradients)


class _AdamBase(nn.Optimizer):
    """Shared state of :class:`AdamW` and :class:`Lamb`: betas, eps, first and second moments (Parameters
    ``exp_avg.<name>`` and ``exp_avg_sq.<name>``), and the bias corrections of the current update."""

    def __init__(self, params, learning_rate, betas: tuple[float, float], eps: float, weight_decay: float):
        super().__init__(learning_rate, params, weight_decay)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0 and eps >= 0.0):
            raise ValueError(f"{type(self).__name__} needs betas in [0, 1) and eps >= 0, got {betas}, {eps}")
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.exp_avg = self._parameters.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self._parameters.clone(prefix="exp_avg_sq", init="zeros")

    def _next_step(self):
        """Advance ``global_step``; the bias corrections ``1 - beta1**t`` and ``sqrt(1 - beta2**t)`` of the new t."""
        step = self.global_step.astype(ms.float32).reshape(()) + 1.0
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return 1.0 - ops.pow(self.beta1, step), ops.sqrt(1.0 - ops.pow(self.beta2, step))

    def _apply(self, opt, head: tuple, lr, weight_decay, gradients):
        """``opt(head, lr, weight_decay, param, exp_avg, exp_avg_sq, grad, decay_flag)`` on every parameter,
        with per-parameter (group) or shared learning rate and weight decay."""
        if self.is_group_lr:
            return self.hyper_map(ops.partial(opt, head), lr, weight_decay, self._parameters, self.exp_avg,
                                  self.exp_avg_sq, gradients, self.decay_flags)
        if self.is_group:
            return self.hyper_map(ops.partial(opt, head, lr), weight_decay, self._parameters, self.exp_avg,
                                  self.exp_avg_sq, gradients, self.decay_flags)
        return self.hyper_map(ops.partial(opt, head, lr, weight_decay), self._parameters, self.exp_avg,
                              self.exp_avg_sq, gradients, self.decay_flags)


class AdamW(_AdamBase):
    """torch ``AdamW`` (``amsgrad=False``) as a MindSpore optimizer with group and per-step learning rates:
    ``p *= 1 - lr*wd``; ``m, v`` moments; ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(self, params, learning_rate, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, learning_rate, betas, eps, weight_decay)

    @jit
    def construct(self, gradients):
        lr = self.get_lr()
        weight_decay = self.get_weight_decay()
        bias1, bias2_sqrt = self._next_step()
        return self._apply(_adamw_opt, (self.beta1, self.beta2, self.eps, bias1, bias2_sqrt), lr, weight_decay,
                           gradients)


class Lamb(_AdamBase):
    """timm ``Lamb`` (``timm/optim/lamb.py``, default flags: bias correction, grad averaging, no trust clip, no
    ``always_adapt``) as a MindSpore optimizer: gradients divided by ``max(global_norm / max_grad_norm, 1)``
    (None: no clipping), Adam update with ``eps`` outside the square root, and for parameters with weight decay
    ``update += wd * p`` then ``update *= |p| / |update|`` (1 if either norm is 0); ``p -= lr * update``."""

    def __init__(self, params, learning_rate, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_grad_norm: float | None = 1.0):
        super().__init__(params, learning_rate, betas, eps, weight_decay)
        self.max_grad_norm = None if max_grad_norm is None else Tensor(max_grad_norm, ms.float32)

    @jit
    def construct(self, gradients):
        lr = self.get_lr()
        weight_decay = self.get_weight_decay()
        bias1, bias2_sqrt = self._next_step()
        clip = _ONE
        if self.max_grad_norm is not None:
            norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, gradients)))
            clip = ops.maximum(norm / self.max_grad_norm, _ONE)
        return self._apply(_lamb_opt, (self.beta1, self.beta2, self.eps, bias1, bias2_sqrt, clip), lr,
                           weight_decay, gradients)
