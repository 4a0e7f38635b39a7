"""The compiled train step: forward, backward, loss scaling, gradient accumulation, data-parallel reduction,
global-norm clipping, the optimizer update and the weight EMA, in one :class:`TrainStep` cell (GRAPH_MODE or
PyNative). :func:`build_train_network` builds it from a ``TrainConfig`` (AMP level included).

Per call (one micro-batch), following timm ``train.py`` (``loss / accum_steps``, ``NativeScaler``,
``ModelEmaV2``) with MindSpore's own pieces (``ops.value_and_grad``, ``mindspore.amp`` loss scalers and
``all_finite``, ``ops.clip_by_global_norm``, ``nn.DistributedGradReducer``):

1. ``loss = loss_fn(network(images), targets)``; gradients of ``loss * scale / accumulate`` in one forward and
   backward, then unscaled (``scale`` = the loss scaler's value; 1 without loss scaling). The scaling is
   :func:`scale_loss` / :func:`unscale_grads`, not the scaler's own ``scale`` / ``unscale``: those are
   ``jit`` functions whose compile cache is keyed on ``id()`` of the scale Parameter, so in PyNative a new
   scaler whose Parameter takes a freed one's address runs the old graph with the old scale (seen in CI: a
   step unscaled by the previous test's 1024 instead of 65536). The scaler keeps its state and ``adjust``.
2. With ``accumulate = k > 1`` the gradients are summed into ``grad_accum.*`` buffers; every k-th call uses the sum
   (= the mean gradient over the k micro-batches) and zeroes the buffers. ``k`` is a Parameter
   (``grad_accum.every``, from 1 to the built ``accumulate``): :meth:`TrainStep.set_accumulate` changes it without
   a new graph (FastMIM-P's phases), :meth:`TrainStep.reset_accumulation` drops a partial sum.
3. At an update: data parallel -> ``DistributedGradReducer`` (mean over ranks); with loss scaling the update is
   skipped when a gradient is inf/NaN and the dynamic scale adjusted (``DynamicLossScaler``: /2 at once,
   x2 after 2000 finite updates); clipping to ``grad_clip`` global norm; ``optimizer(grads)``; then the EMA
   ``ema = d * ema + (1 - d) * w`` over every model parameter, BN statistics included (timm ``ModelEmaV2``:
   every update call, also when the loss scaler skipped it, as timm calls ``model_ema.update`` after every
   optimizer step). Parameters that schedules set (``ModelCfg.ms_only_params``: VanillaNet's ``act_learn``,
   AdaBin's ``t``/``k``; not in torch's state_dict, so not averaged by timm) are copied, so the EMA model runs
   at the current epoch's schedule.

Non-finite values: a micro-batch whose loss or running statistics (batch-norm moving mean and variance, moved by
the forward) are not all finite, on any rank (under data parallel the loss and this flag are all-reduced together,
so every rank logs the global loss and decides alike), gets its running statistics put back, and the update it
belongs to is not applied; neither is an update whose (reduced, accumulated) gradients are not all finite: weights,
optimizer state and EMA stay as they were. Such updates are counted in ``nonfinite_steps``; whether the run stops or
goes on is the loop's decision (``train.skip_nonfinite``). With a loss scaler, non-finite gradients from a finite
forward are the scaler's float16 overflow instead (skipped, not counted, EMA updated: above).

Distillation (``teacher=``, :mod:`.distill`): the frozen teacher runs first, in eval mode and outside the
differentiated function, on the same micro-batch (or its logits come in, replayed from the teacher cache: a
second compiled graph of the same step, without the teacher); ``loss_fn`` then takes ``(logits, targets,
teacher_logits)``.
Its Parameters (``teacher.*``) are not trained, not averaged and not part of :meth:`TrainStep.state_parameters`.

Every piece of state is a Parameter of the step (checkpoints and resume): the model's parameters under their
own names, the EMA weights under ``ema.<name>``, and the optimizer's, ``grad_accum.*``, ``loss_scale.*`` and
``nonfinite_steps``; all but ``grad_accum.every``, a setting of the run (its config) rather than state.
"""
from __future__ import annotations

import copy
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, amp, nn, ops
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode

from convert.state import ms_only_names
from specs.errors import ConfigError

from .distill import resize_batch

__all__ = ["TrainStep", "build_train_network", "check_amp_level", "scale_loss", "unscale_grads", "AMP_LEVELS",
           "LOSS_SCALE_FACTOR", "LOSS_SCALE_WINDOW"]

LOSS_SCALE_FACTOR = 2          # dynamic loss scale: torch GradScaler's growth/backoff (MindSpore's default too)
LOSS_SCALE_WINDOW = 2000       # finite updates before the scale grows (torch GradScaler growth_interval)
EMA_PREFIX = "ema."            # = convert.io.EMA: how checkpoints and the converter find the EMA weights

_update_ema = ops.MultitypeFuncGraph("update_ema")
_accumulate = ops.MultitypeFuncGraph("accumulate")
_reset = ops.MultitypeFuncGraph("reset")
_snapshot = ops.MultitypeFuncGraph("snapshot")
_hyper_map = ops.HyperMap()


@_update_ema.register("Tensor", "Tensor", "Tensor")
def _ema_one(decay, ema, weight):
    return ops.assign(ema, ema * decay + (1 - decay) * weight.astype(ema.dtype))


@_accumulate.register("Tensor", "Tensor")
def _accumulate_one(accum, grad):
    return ops.assign_add(accum, grad.astype(accum.dtype))


@_reset.register("Tensor")
def _reset_one(accum):
    return ops.assign(accum, ops.zeros_like(accum))


@_snapshot.register("Tensor")
def _snapshot_one(param):
    return param * 1


def _multiply_one(factor, value):
    return value * factor.astype(value.dtype)


def scale_loss(scale: Tensor, loss: Tensor) -> Tensor:
    """``loss * scale``: ``amp.LossScaler.scale``'s math, inline in the caller's graph (module docstring, 1.)."""
    return _multiply_one(scale, loss)


def unscale_grads(scale: Tensor, grads: tuple) -> tuple:
    """Every gradient times ``1 / scale``: ``amp.LossScaler.unscale``'s math (``Reciprocal``), inline in the
    caller's graph (module docstring, 1.)."""
    return _hyper_map(ops.partial(_multiply_one, ops.reciprocal(scale)), grads)


def data_parallel() -> bool:
    """Whether MindSpore's auto-parallel context is data parallel (``msrun`` + ``init()`` set it)."""
    return ms.get_auto_parallel_context("parallel_mode") == ParallelMode.DATA_PARALLEL


def scheduled_parameters(network: nn.Cell) -> set[int]:
    """``id``s of the Parameters of ``network`` that schedules set (``ModelCfg.ms_only_params``: VanillaNet's
    ``act_learn``, AdaBin's ``t``/``k``), found through the registered model inside ``network``."""
    models = [cell for _, cell in network.cells_and_names() if hasattr(cell, "pretrained_cfg")]
    if not models:
        return set()
    names = ms_only_names(models[0])
    return {id(p) for n, p in models[0].parameters_and_names() if n in names}


def running_statistics(network: nn.Cell) -> list[Parameter]:
    """The Parameters the forward itself moves: every floating-point Parameter of ``network`` that is not trained
    and not set by a schedule (batch norm's ``moving_mean`` / ``moving_variance``)."""
    trained = {id(p) for p in network.trainable_params()}
    skip = trained | scheduled_parameters(network)
    return [p for p in network.get_parameters() if id(p) not in skip and p.dtype in (ms.float32, ms.float16)]


def _share_primitives(model: nn.Cell) -> dict:
    """A ``copy.deepcopy`` memo that keeps the model's primitives shared (``ops.Custom`` kernels do not copy)."""
    return {id(v): v for _, cell in model.cells_and_names() for v in vars(cell).values()
            if isinstance(v, ops.Primitive)}


class TrainStep(nn.Cell):
    """``step(images, targets) -> loss``: one micro-batch of training (see the module docstring).

    ``network`` maps images to logits (already AMP-cast if wanted: :func:`build_train_network`), ``loss_fn``
    ``(logits, targets) -> scalar``, ``optimizer`` a ``mindspore.nn.Optimizer`` over ``network``'s trainable
    parameters. ``loss_scale``: ``"none"``, ``"static"`` (``amp.StaticLossScaler(loss_scale_value)``) or
    ``"dynamic"`` (``amp.DynamicLossScaler(loss_scale_value, 2, 2000)``). ``ema_decay``: None (off) or timm's
    ``model_ema_decay``. The returned loss is the micro-batch's unscaled float32 loss (under data parallel,
    its mean over the ranks). ``teacher``: a frozen :class:`.distill.Teacher` whose logits ``loss_fn`` takes
    third; ``student_resize``: the side the network's training input is resized to (:func:`.distill.resize_batch`;
    evaluation and the EMA model see images as they come). With a teacher, ``step(images, targets,
    teacher_logits)`` uses the given logits instead of running it, and ``return_teacher_logits`` makes the step
    return ``(loss, teacher_logits)`` (the teacher cache records them)."""

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, *,
                 grad_clip: float | None = None, accumulate: int = 1, loss_scale: str = "none",
                 loss_scale_value: float = 65536.0, ema_decay: float | None = None, teacher: nn.Cell | None = None,
                 student_resize: int | None = None, return_teacher_logits: bool = False):
        super().__init__(auto_prefix=False)
        if not (isinstance(accumulate, int) and accumulate >= 1):
            raise ConfigError(f"config key 'train.accumulate' must be a positive int, got {accumulate!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ConfigError(f"config key 'train.grad_clip' must be positive, got {grad_clip!r}")
        if ema_decay is not None and not 0 <= ema_decay <= 1:
            raise ConfigError(f"config key 'train.ema_decay' must be in [0, 1], got {ema_decay!r}")
        if loss_scale not in ("none", "static", "dynamic"):
            raise ConfigError(f"config key 'train.loss_scale' must be one of none, static, dynamic, got {loss_scale!r}")
        if loss_scale != "none" and not loss_scale_value >= 1:
            raise ConfigError(f"config key 'train.loss_scale_value' must be >= 1, got {loss_scale_value!r}")
        # listed first, so that parameters_and_names() gives the model's parameters their own names (checkpoints)
        self.model_parameters = ParameterTuple(list(network.get_parameters()))
        self.network = network
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.accumulate = accumulate
        self.grad_clip = grad_clip
        self.teacher = teacher
        self.student_resize = student_resize
        self.return_teacher_logits = return_teacher_logits
        forward = self._forward if teacher is None else self._forward_distill
        self.grad_fn = ops.value_and_grad(forward, None, self.weights, has_aux=True)
        self.hyper_map = ops.HyperMap()

        self.scaler = None
        if loss_scale != "none":
            self.scaler = (amp.StaticLossScaler(loss_scale_value) if loss_scale == "static" else
                           amp.DynamicLossScaler(loss_scale_value, LOSS_SCALE_FACTOR, LOSS_SCALE_WINDOW))
            # the scaler's Parameters, registered under train-state names (saved and restored with the step)
            self.scaler.scale_value.name = "loss_scale.value"
            self.loss_scale_value = self.scaler.scale_value
            if loss_scale == "dynamic":
                self.scaler.counter.name = "loss_scale.counter"
                self.loss_scale_counter = self.scaler.counter

        if accumulate > 1:
            self.accum = self.weights.clone(prefix="grad_accum", init="zeros")   # not "accum": nn.SGD's momentum
            self.micro_step = Parameter(Tensor(0, ms.int32), name="grad_accum.micro_step", requires_grad=False)
            self.accum_every = Parameter(Tensor(accumulate, ms.int32), name="grad_accum.every", requires_grad=False)

        self.reduce = data_parallel()
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True) if self.reduce else nn.Identity()
        self.world = get_group_size() if self.reduce else 1
        self.all_reduce = ops.AllReduce() if self.reduce else None

        self.running = ParameterTuple(running_statistics(network))
        self.has_running = len(self.running) > 0
        self.nonfinite_steps = Parameter(Tensor(0, ms.int32), name="nonfinite_steps", requires_grad=False)
        if accumulate > 1:
            self.accum_finite = Parameter(Tensor(1, ms.int32), name="grad_accum.finite", requires_grad=False)

        self.ema_decay = ema_decay
        self._ema_net = None
        if ema_decay is not None:
            self._build_ema(network, ema_decay)
        self.set_train(True)

    def _build_ema(self, network: nn.Cell, decay: float) -> None:
        """The EMA model: a copy of ``network`` whose Parameters (renamed ``ema.<name>``) are the EMA weights."""
        ema_net = copy.deepcopy(network, _share_primitives(network))
        scheduled = scheduled_parameters(network)
        averaged, copied = ([], []), ([], [])
        for src, dst in zip(network.get_parameters(), ema_net.get_parameters()):
            pairs = copied if id(src) in scheduled else averaged
            dst.name = EMA_PREFIX + src.name
            dst.requires_grad = False
            pairs[0].append(dst)
            pairs[1].append(src)
        self.ema = ParameterTuple(list(ema_net.get_parameters()))
        self.ema_averaged, self.ema_sources = ParameterTuple(averaged[0]), ParameterTuple(averaged[1])
        self.ema_copied, self.ema_copy_sources = ParameterTuple(copied[0]), ParameterTuple(copied[1])
        self.ema_decay_t = Tensor(decay, ms.float32)
        ema_net.set_train(False)
        object.__setattr__(self, "_ema_net", ema_net)     # not a child cell: its Parameters are listed once, as ema.*

    # --- the graph --------------------------------------------------------------------------------------------

    def _forward(self, images, targets):
        return self._scaled(self.loss_fn(self.network(images), targets).astype(ms.float32))

    def _forward_distill(self, images, targets, teacher_logits):
        logits = self.network(resize_batch(images, self.student_resize))
        return self._scaled(self.loss_fn(logits, targets, teacher_logits).astype(ms.float32))

    def _scaled(self, loss):
        scaled = loss if self.scaler is None else scale_loss(self.loss_scale_value, loss)
        if self.accumulate > 1:
            scaled = scaled / self.accum_every.astype(scaled.dtype)
        return scaled, loss

    def _update(self, grads, forward_ok):
        """One optimizer update with the (unscaled, accumulated) ``grads``; ``forward_ok``: the micro-batches since
        the last update had finite losses and running statistics. Returns whether it was applied (module
        docstring: non-finite values)."""
        if self.reduce:
            grads = self.reducer(grads)
        grads_ok = amp.all_finite(grads)
        if self.scaler is not None:
            self.scaler.adjust(grads_ok)
        applied = ops.logical_and(grads_ok, forward_ok)
        if applied:
            if self.grad_clip is not None:
                grads = ops.clip_by_global_norm(grads, self.grad_clip)
            applied = ops.depend(applied, self.optimizer(grads))
        # with a loss scaler, gradients overflowing from a finite forward are the scaler's skip: the EMA still
        # follows (timm) and the update is not counted as non-finite
        counted = forward_ok if self.scaler is not None else applied
        if self.ema_decay is not None and counted:
            applied = ops.depend(applied, self.hyper_map(ops.partial(_update_ema, self.ema_decay_t),
                                                         self.ema_averaged, self.ema_sources))
            applied = ops.depend(applied, self.hyper_map(ops.assign, self.ema_copied, self.ema_copy_sources))
        skipped = ops.logical_not(counted).astype(ms.int32)
        return ops.depend(applied, ops.assign_add(self.nonfinite_steps, skipped))

    def construct(self, images, targets, teacher_logits=None):
        if self.teacher is None:
            return self._train(images, targets)
        if teacher_logits is None:      # a live teacher; given logits: replayed ones (.distill.TeacherCache)
            teacher_logits = self.teacher(images)
        loss = self._train(images, targets, teacher_logits)
        return (loss, teacher_logits) if self.return_teacher_logits else loss

    def _train(self, images, targets, teacher_logits=None):
        before = self.hyper_map(_snapshot, self.running) if self.has_running else ()   # before this forward
        if teacher_logits is None:
            (_, loss), grads = self.grad_fn(images, targets)
        else:
            (_, loss), grads = self.grad_fn(images, targets, teacher_logits)
        finite = ops.isfinite(loss)
        for stat in self.running:       # (amp.all_finite here as well breaks its use on the gradients at O2)
            finite = ops.logical_and(finite, ops.isfinite(stat).all())
        bad = ops.logical_not(finite).astype(ms.float32)
        if self.reduce:         # one all-reduce: every rank sees the global loss and judges the step alike
            summed = self.all_reduce(ops.stack([loss, bad]))
            loss, bad = summed[0] / self.world, summed[1]
        forward_ok = bad == 0
        if self.has_running and not forward_ok:
            loss = ops.depend(loss, self.hyper_map(ops.assign, self.running, before))
        if self.scaler is not None:
            grads = unscale_grads(self.loss_scale_value, grads)
        if self.accumulate == 1:
            return ops.depend(loss, self._update(grads, forward_ok))
        loss = ops.depend(loss, self.hyper_map(_accumulate, self.accum, grads))
        finite = ops.logical_and(self.accum_finite > 0, forward_ok)
        step = self.micro_step + 1
        if step == self.accum_every:
            step = ops.depend(step, self._update(self.accum, finite))
            step = ops.depend(step, self.hyper_map(_reset, self.accum))
            step = step * 0
            finite = ops.logical_or(finite, True)
        loss = ops.depend(loss, ops.assign(self.accum_finite, finite.astype(ms.int32)))
        return ops.depend(loss, ops.assign(self.micro_step, step))

    def set_train(self, mode: bool = True) -> "TrainStep":
        """``Cell.set_train`` for the step's cells; the teacher stays in eval mode."""
        super().set_train(mode)
        if self.teacher is not None:
            self.teacher.set_train(False)
        return self

    def state_parameters(self) -> list[Parameter]:
        """Every Parameter a training checkpoint holds: all of the step's but the teacher's and the accumulation
        period (set from the run's config: :meth:`set_accumulate`)."""
        skipped = {id(p) for p in self.teacher.get_parameters()} if self.teacher is not None else set()
        if self.accumulate > 1:
            skipped.add(id(self.accum_every))
        return [p for p in self.get_parameters() if id(p) not in skipped]

    def set_accumulate(self, k: int) -> None:
        """Update every ``k`` micro-batches from now on (``1 <= k <=`` the ``accumulate`` the step was built with)."""
        if not 1 <= k <= self.accumulate:
            raise ConfigError(f"gradient accumulation {k} outside 1..{self.accumulate}, what this train step was "
                              f"built for")
        if self.accumulate > 1:
            self.accum_every.set_data(Tensor(k, ms.int32))

    def reset_accumulation(self) -> None:
        """Drop the gradients summed since the last update (MAE's engine zeroes them at each epoch's start)."""
        if self.accumulate > 1:
            self.micro_step.set_data(Tensor(0, ms.int32))
            self.accum_finite.set_data(Tensor(1, ms.int32))
            for buffer in self.accum:
                buffer.set_data(ops.zeros_like(buffer))

    def nonfinite_count(self) -> int:
        """Updates not applied so far because of a non-finite loss or gradients (module docstring)."""
        return int(self.nonfinite_steps.asnumpy())

    # --- EMA access -------------------------------------------------------------------------------------------

    def ema_parameters(self) -> list[Parameter]:
        """The EMA weights (``ema.<model parameter name>``, in the model's order); empty when the EMA is off."""
        return list(self.ema) if self._ema_net is not None else []

    def ema_model(self) -> nn.Cell:
        """A copy of the network whose Parameters are the EMA weights (evaluate it like the model; it follows
        every update, nothing to copy). Raises :class:`ConfigError` when the EMA is off."""
        if self._ema_net is None:
            raise ConfigError("no EMA model: config key 'train.ema_decay' is null")
        return self._ema_net

    def copy_ema_to(self, model: nn.Cell) -> nn.Cell:
        """Copy the EMA weights into ``model`` (same architecture as the trained network); returns ``model``."""
        ema = {p.name[len(EMA_PREFIX):]: p for p in self.ema_parameters()}
        if not ema:
            raise ConfigError("no EMA weights: config key 'train.ema_decay' is null")
        for param in model.get_parameters():
            param.set_data(ema[param.name].value().copy())
        return model


# ``train.amp_level`` -> mindspore.amp level. O1 (the recipes' per-operator float16, torch autocast's analogue) is
# MindSpore's ``auto``: white-listed operators (convolutions, matmuls) in float16, black-listed ones (softmax,
# norms, reductions) in float32, per operator. MindSpore 2.8's own ``O1`` applies the same lists by rewriting each
# cell's source (``mindspore.rewrite``), which fails on ms_models (relative imports; BatchNorm subclasses) and
# leaves a ``rewritten_network/`` folder in the working directory.
AMP_LEVELS = {"O0": "O0", "O1": "auto", "O2": "O2", "O3": "O3"}


def check_amp_level(amp_level: str) -> str:
    """The mindspore.amp level of ``train.amp_level`` (:data:`AMP_LEVELS`); a one-line :class:`ConfigError`
    naming the key otherwise. All four train on CPU too (measured: docs/training_step.md)."""
    if amp_level not in AMP_LEVELS:
        raise ConfigError(f"config key 'train.amp_level' must be one of {', '.join(AMP_LEVELS)}, got {amp_level!r}")
    return AMP_LEVELS[amp_level]


def build_train_network(model: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, train_cfg,
                        teacher: nn.Cell | None = None, student_resize: int | None = None,
                        return_teacher_logits: bool = False) -> TrainStep:
    """The :class:`TrainStep` of ``train_cfg`` (a ``TrainConfig``): ``amp_level`` applied to ``model`` with
    ``mindspore.amp.auto_mixed_precision`` (float16; checked first, :func:`check_amp_level`),
    then ``grad_clip``, ``accumulate``, ``loss_scale``/``loss_scale_value`` and ``ema_decay``; for distillation
    the ``teacher`` and the student's input resize (:mod:`.distill`)."""
    network = amp.auto_mixed_precision(model, check_amp_level(train_cfg.amp_level))
    return TrainStep(network, loss_fn, optimizer, grad_clip=train_cfg.grad_clip, accumulate=train_cfg.accumulate,
                     loss_scale=train_cfg.loss_scale, loss_scale_value=train_cfg.loss_scale_value,
                     ema_decay=train_cfg.ema_decay, teacher=teacher, student_resize=student_resize,
                     return_teacher_logits=return_teacher_logits)
