"""What every attack shares: validation, model handling, projection and the success test.

Attacks see a model as a function from [0, 1] pixels to stacked logits ``[H, B, C]``
(a plain ``[B, C]`` classifier is one head). They climb an *objective* (a surrogate,
see :mod:`.objectives`) but success is always judged by the defended model's real
decision rule (:func:`auxsurgery.model.rule_predict` with the model's ``alpha``).

Iterative attacks stop spending compute on a sample once it fools the rule: they drop it
from the working batch (:class:`Survivors`, :func:`take`, :meth:`Ball.select`) and keep
its first fooling iterate. With ``precision="bf16"`` the gradient steps run the model under
bfloat16 autocast, and a sample only counts as fooled once an fp32 forward agrees
(:meth:`Attack.fooled` with the inputs).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .._utils import preserved_state, renamed_kwargs
from ..model import as_stacked, check_labels, check_pixels
from ..rules import check_rule, get_rule, rule_predict
from .objectives import Objective, evaluate, get_objective, wants_true_label

NORMS = ("linf", "l2")
PRECISIONS = ("fp32", "bf16")

__all__ = [
    "NORMS", "PRECISIONS", "Attack", "Ball", "PassCounter", "Passes", "Survivors", "ascent_direction", "enforce_bounds",
    "frozen", "head_weights", "is_adversarial", "l2_norms", "per_sample", "perturbation_norms", "robust_accuracy_curve",
    "take",
]


# ---- the model during an attack ---------------------------------------------------------


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the model's exact prior state afterwards.

    Every submodule's own ``training`` flag and every parameter's ``requires_grad`` are
    restored, even if the attack raises.
    """
    with preserved_state(model, requires_grad=True):
        model.eval().requires_grad_(False)
        yield model


# ---- what an attack costs, in image-passes -----------------------------------------------


@dataclass
class Passes:
    """Image-passes spent: ``forward`` images pushed through a model's forward, ``backward`` images whose
    input gradient was computed (a backward pass through the network for each)."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(self.forward + other.forward, self.backward + other.backward)

    @property
    def total(self) -> int:
        """Forward and backward image-passes together."""
        return self.forward + self.backward

    def to_dict(self) -> dict:
        """``{"forward": int, "backward": int}``."""
        return asdict(self)


class _CountBackward(torch.autograd.Function):
    """Identity on the model's input whose backward counts the images a gradient reaches."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, passes: Passes) -> torch.Tensor:
        ctx.passes = passes
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.passes.backward += grad.shape[0]
        return grad, None


class PassCounter:
    """Counts the image-passes through ``modules`` while it is entered (``with PassCounter(model) as passes``).

    Hooks sit on the given modules only: a forward counts the batch it is given, a gradient that reaches
    that input counts its batch as backward passes (each backward through a forward counts again, as
    FAB's per-class backwards do). A hooked module called inside another (a wrapper around the model)
    counts once, at the outermost call. The same counter around our attacks and around a reference
    library's makes their costs comparable, whatever each does inside.
    """

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.passes = Passes()
        self._depth = 0
        self._handles: list = []

    def _pre(self, module: nn.Module, args: tuple):
        self._depth += 1
        if self._depth > 1 or not args or not torch.is_tensor(args[0]):
            return None
        x = args[0]
        self.passes.forward += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            return (_CountBackward.apply(x, self.passes), *args[1:])
        return None

    def _post(self, module: nn.Module, args: tuple, output):
        self._depth -= 1

    def __enter__(self) -> Passes:
        for module in dict.fromkeys(self.modules):
            self._handles += [module.register_forward_pre_hook(self._pre),
                              module.register_forward_hook(self._post, always_call=True)]
        return self.passes

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._depth = [], 0


def head_weights(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The model's ``alpha`` head weights, or ones (one per head) for a model without them."""
    alpha = getattr(model, "alpha", None)
    return alpha if isinstance(alpha, torch.Tensor) else logits.new_ones(logits.shape[0])


def _fooled(logits: torch.Tensor, y: torch.Tensor, rule: str, alpha: torch.Tensor, targeted: bool) -> torch.Tensor:
    prediction = rule_predict(logits, rule, alpha)
    return prediction == y if targeted else prediction != y


@torch.no_grad()
def is_adversarial(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, rule: str = "vote", targeted: bool = False
) -> torch.Tensor:
    """Which samples fool ``model``'s decision ``rule`` (reach target ``y`` if ``targeted``): bool ``[B]``."""
    check_rule(rule)
    if hasattr(model, "check_input"):
        model.check_input(x_adv, "x_adv")
    with frozen(model):
        logits = as_stacked(model(x_adv))
    check_labels(y, x_adv.shape[0], logits.shape[-1])
    return _fooled(logits, y, rule, head_weights(model, logits), targeted)


# ---- geometry of the threat model ----------------------------------------------------------


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``[B]`` values to broadcast over a ``[B, ...]`` tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms ``[B]`` of a ``[B, ...]`` tensor."""
    return t.flatten(1).norm(dim=1)


def perturbation_norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``norm`` (``"linf"`` or ``"l2"``) of a ``[B, ...]`` tensor: ``[B]``."""
    return t.flatten(1).abs().amax(dim=1) if norm == "linf" else l2_norms(t)


def robust_accuracy_curve(norms: torch.Tensor, eps_values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Robust accuracy at every budget from one minimum-norm run: the fraction of samples whose
    smallest fooling perturbation is larger than eps, ``[len(eps_values)]``.

    ``norms`` ``[B]``: each sample's smallest fooling perturbation norm, ``inf`` where none was
    found and ``0`` where the clean input already fools (e.g. :attr:`FMN.last_norms`). A sample
    fooled at exactly eps counts as fooled, as the threat model's ball is closed; eps is compared
    in the norms' dtype (0.1 is the float32 0.1 for float32 norms, as an attack at eps=0.1 sees it).
    """
    norms = torch.as_tensor(norms).detach().flatten()
    norms = norms if norms.is_floating_point() else norms.double()
    eps = torch.as_tensor(eps_values).to(norms.device, norms.dtype).flatten()
    if norms.numel() == 0:
        raise ValueError("robust_accuracy_curve needs at least one norm")
    if torch.isnan(norms).any() or (norms < 0).any():
        raise ValueError("norms must be >= 0 (inf where no adversarial was found)")
    return (norms.unsqueeze(0) > eps.unsqueeze(1)).double().mean(1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)


class Ball:
    """The threat model around clean inputs ``x``: the ``norm`` ball of radius ``eps`` within [0, 1].

    Built once per attack run. The hot loop of a gradient attack is a few elementwise
    passes over the batch, so each step allocates as little as it can: the L-inf ball
    clipped to the box is itself a box, whose corners are computed here once, and a
    projected step is one fused multiply-add followed by an in-place clamp. ``eps`` is a
    number (or a 0-d tensor) for the whole batch, or a ``[B]`` tensor of per-sample radii
    (FMN's adaptive constraints; ``inf`` means unconstrained but for the box).
    """

    def __init__(self, x: torch.Tensor, eps: float | torch.Tensor, norm: str):
        self.x, self.eps, self.norm = x, eps, norm
        self.per_sample = torch.is_tensor(eps) and eps.dim() == 1
        if norm == "linf":
            radius = per_sample(eps, x) if self.per_sample else eps
            self.low = (x - radius).clamp_(0.0, 1.0)
            self.high = (x + radius).clamp_(0.0, 1.0)

    def select(self, keep: torch.Tensor) -> "Ball":
        """The ball around the samples ``keep`` (a bool mask or indices) only."""
        ball = Ball.__new__(Ball)
        ball.x, ball.norm, ball.per_sample = self.x[keep], self.norm, self.per_sample
        ball.eps = self.eps[keep] if self.per_sample else self.eps
        if self.norm == "linf":
            ball.low, ball.high = self.low[keep], self.high[keep]
        return ball

    def project_(self, z: torch.Tensor) -> torch.Tensor:
        """Project ``z`` onto the ball in place (``z`` must be a tensor the caller owns)."""
        if self.norm == "linf":
            return z.clamp_(self.low, self.high)
        delta = z.sub_(self.x)
        scale = (self.eps / l2_norms(delta).clamp_min(1e-12)).clamp_(max=1.0)
        # Clipping to the box only moves coordinates towards x (inside it): still in the ball.
        return delta.mul_(per_sample(scale, delta)).add_(self.x).clamp_(0.0, 1.0)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The point of the ball nearest to ``z``, as a new tensor."""
        return self.project_(z.clone())

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
        """``P(x_adv + size * d)`` for the ascent direction ``d`` of ``grad``; ``size``: float or ``[B]``."""
        size = per_sample(size, x_adv) if torch.is_tensor(size) else x_adv.new_tensor(size)
        return self.project_(torch.addcmul(x_adv, size, ascent_direction(grad, self.norm)))

    def random_point(self, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random point of the ball (clipped to [0, 1]), drawn for the whole batch at once."""
        if self.per_sample:
            raise ValueError("random points need one radius for the whole batch")
        x = self.x
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return noise.mul_(2 * self.eps).sub_(self.eps).add_(x).clamp_(0.0, 1.0)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # Radius u^(1/d) makes the point uniform in the ball's volume, not just on its surface.
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u.pow(1.0 / x[0].numel())
        direction.mul_(per_sample(radius / l2_norms(direction), x))
        return direction.add_(x).clamp_(0.0, 1.0)


def enforce_bounds(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Make ``x_adv`` satisfy the threat model exactly: inside [0, 1] and, if ``eps`` is set, the ball.

    For L-inf the bound holds exactly: ``(x_adv - x).abs() <= eps`` computed in the input's
    dtype or in float64. Plain projection can overshoot by one rounding unit, because
    ``x + eps`` rounds to the nearest representable number; such coordinates step back one unit.
    For L2 the norm of ``x_adv - x``, computed in the input's dtype and in float64, is at most
    ``eps``: samples projection leaves a rounding error outside shrink toward ``x`` until inside.
    """
    if eps is None:
        return x_adv.clamp(0.0, 1.0)
    if norm == "l2":
        x_adv = Ball(x, eps, norm).project(x_adv)
        for attempt in range(1, 40):
            delta = x_adv - x
            over = (l2_norms(delta) > eps) | (l2_norms(x_adv.double() - x.double()) > eps)
            if not over.any():
                break
            # Clamping into [0, 1] only moves toward x (which is inside), so it never grows the norm.
            shrink = 1 - 2.0 ** (attempt - 24)
            x_adv = torch.where(per_sample(over, x), (x + delta * shrink).clamp(0.0, 1.0), x_adv)
        return x_adv
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.item() > eps:  # eps itself rounded up in this dtype: use the number just below
        eps_t = torch.nextafter(eps_t, torch.zeros_like(eps_t))
    x_adv = Ball(x, eps_t, norm).project(x_adv)
    # Measured in float64, where the difference of two float32 values is (nearly) exact.
    overshoot = (x_adv.double() - x.double()).abs() > eps_t.double()
    return torch.where(overshoot, torch.nextafter(x_adv, x), x_adv)


# ---- dropping finished samples from a run ---------------------------------------------


def take(keep: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each per-sample tensor indexed by ``keep`` (``None`` passes through): the still-working samples."""
    return tuple(None if t is None else t[keep] for t in tensors)


class Survivors:
    """Index bookkeeping of a run that drops samples from its working batch once they are done.

    ``result`` is the run's output for the full batch; ``index`` the batch positions of the samples
    still worked on. ``retire(done, values)`` writes the finished samples' results and returns the
    mask of the others, to index the run's per-sample state with (:func:`take`,
    :meth:`Ball.select`); ``finish(values)`` writes the remaining samples' results. A dropped sample
    costs no more forward or backward passes, and since a run draws all its randomness up front,
    dropping one changes nothing for the others.
    """

    def __init__(self, result: torch.Tensor):
        self.result = result
        self.index = torch.arange(result.shape[0], device=result.device)

    def __bool__(self) -> bool:
        """Whether any sample is still worked on."""
        return self.index.numel() > 0

    def retire(self, done: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Record ``values[done]`` as the final result of those samples; the keep mask of the others."""
        self.result[self.index[done]] = values[done]
        keep = ~done
        self.index = self.index[keep]
        return keep

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """Record ``values`` for the samples still worked on; the full result."""
        self.result[self.index] = values
        return self.result


# ---- the base class ---------------------------------------------------------------------


class Attack:
    """Base class of all attacks: ``attack(x, y) -> x_adv``.

    Args:
        model: maps [0, 1] pixels to logits ``[H, B, C]`` (an AuxModel) or ``[B, C]``.
        objective: the loss the attack maximises: a name from :mod:`.objectives` or a
            callable ``(logits [H,B,C], y [B], alpha [H]) -> [B]``. A callable is used
            as given, so for a targeted attack it must already reward reaching ``y``; one
            marked :func:`~.objectives.needs_true_label` is called
            ``(logits, target, alpha, y_true)`` (untargeted attacks and APGDT/PGDT only).
        eps: radius of the threat model's ball (``None``: unbounded, minimum-distance
            attacks only).
        norm: ``"linf"`` or ``"l2"`` (each attack lists the ones it supports in ``norms``).
        rule: the defended model's decision rule that judges success.
        seed: seed of the attack's own random generator (``None``: fresh randomness);
            the global RNG is never touched.
        targeted: ``y`` are target labels to reach instead of true labels to leave.
        kappa: cap of the margin objectives (``vote-margin``, ``margin-*``).
        precision: of the gradient steps (attacks that take it; ``dtype`` before 0.2.0): ``"fp32"`` (the model as
            it is) or ``"bf16"`` (forward and backward under ``torch.autocast`` to bfloat16, on
            CPU or CUDA; the objective itself is computed in the inputs' dtype). A sample only
            counts as fooled once an fp32 forward of the decision rule agrees.

    Subclasses implement :meth:`perturb`; ``__call__`` validates the inputs, freezes the
    model (eval mode, no parameter gradients, restored afterwards) and clips the result
    into the threat model exactly.
    """

    # Declared by every registered attack (see :mod:`.registry`): what it uses of the model.
    kind: str
    norms: tuple[str, ...] = NORMS
    eps_optional = False  # minimum-distance attacks (CW, Boundary) may run without a budget
    # Attacks that aim at targets they pick themselves while success stays untargeted (APGDT):
    # their objective is built targeted and called with the target and the true label.
    targets_objective = False

    @renamed_kwargs(dtype="precision")
    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective | None = "public",
        eps: float | None = 8 / 255,
        norm: str = "linf",
        rule: str = "vote",
        seed: int | None = None,
        targeted: bool = False,
        kappa: float = 0.0,
        precision: str = "fp32",
    ):
        name = type(self).__name__
        if norm not in self.norms:
            raise ValueError(f"{name} supports norm {' or '.join(map(repr, self.norms))}, got {norm!r}")
        if eps is None:
            if not self.eps_optional:
                raise ValueError(f"{name} needs a perturbation budget eps")
        elif norm == "linf" and not 0 <= eps <= 1:
            raise ValueError(f"linf eps must lie in [0, 1] (pixels are in [0, 1]), got {eps}")
        elif norm == "l2" and not eps > 0:
            raise ValueError(f"l2 eps must be > 0, got {eps}")
        rule = check_rule(rule)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        get_rule(rule).check_heads(getattr(model, "num_heads", 1))
        self.model = model
        self.eps = eps
        self.norm = norm
        self.rule = rule
        self.seed = seed
        self.targeted = targeted
        self.kappa = kappa
        self.precision = precision
        self.objective_name = objective if isinstance(objective, str) else getattr(objective, "__name__", None)
        if isinstance(objective, str):
            objective = get_objective(objective, targeted or self.targets_objective, kappa)
        if targeted and wants_true_label(objective):
            raise ValueError(f"objective {self.objective_name!r} needs the true labels besides the targets, which "
                             f"{name} given target labels (targeted=True) does not know: use APGDT or PGDT, which "
                             "pick their targets from the true labels")
        self.objective = objective
        self.generator: torch.Generator | None = None
        self._unchecked_labels: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.config().items())})"

    def config(self) -> dict[str, str]:
        """The settings shown by ``repr``: name to printed value."""
        eps = "None" if self.eps is None else f"{self.eps:.4g}"
        return {"objective": repr(self.objective_name), "eps": eps, "norm": repr(self.norm),
                "rule": repr(self.rule), "targeted": str(self.targeted), "precision": repr(self.precision)}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for inputs ``x`` (pixels in [0, 1]) and labels ``y`` ``[B]``."""
        self._check_inputs(x, y)
        # Detached views share x's storage: attacks never write into them in place.
        x, y = x.detach(), y.detach().long()
        self.generator = torch.Generator(device=x.device)
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)
        with frozen(self.model):
            x_adv = self.perturb(x, y)
        return enforce_bounds(x_adv.detach(), x, self.eps, self.norm)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself, on validated inputs with the model frozen (override this)."""
        raise NotImplementedError

    def success(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which samples of ``x_adv`` fool this attack's model under its rule: bool ``[B]``."""
        return is_adversarial(self.model, x_adv, y, self.rule, self.targeted)

    # ---- helpers for subclasses ------------------------------------------------------

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked logits ``[H, B, C]``: one forward of the model (in its own precision)."""
        logits = as_stacked(self.model(x))
        if self._unchecked_labels is not None:
            labels, self._unchecked_labels = self._unchecked_labels, None
            check_labels(labels, len(labels), logits.shape[-1], self._label_kind())
        return logits

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """The objective per sample ``[B]`` (to maximise).

        ``y`` are the labels the attack judges success against (targets if ``targeted``);
        ``target``, if given, is the class an untargeted attack aims its (targeted) objective at
        (APGDT). The objective gets the true label where it asks for it and it is known.
        """
        alpha = head_weights(self.model, logits)
        if target is not None:
            return evaluate(self.objective, logits, target, alpha, y)
        return evaluate(self.objective, logits, y, alpha, None if self.targeted else y)

    def autocast(self, x: torch.Tensor):
        """The precision context of the gradient steps: bfloat16 autocast with ``precision="bf16"``."""
        if self.precision == "bf16":
            return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def loss_and_grad(self, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None):
        """``(loss [B], d loss / d x_adv, logits)`` from one forward and one backward pass.

        With ``precision="bf16"`` the model runs under autocast; its logits are cast back to the
        inputs' dtype before the objective, so only the network itself runs in bfloat16.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            with self.autocast(x_adv):
                logits = self.logits(x_adv)
            if logits.dtype != x_adv.dtype and self.precision != "fp32":
                logits = logits.to(x_adv.dtype)
            loss = self.loss(logits, y, target)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), grad, logits.detach()

    def fooled(self, logits: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> torch.Tensor:
        """Whether the decision rule on these logits is fooled (reaches the target): bool ``[B]``.

        Pass ``x_adv``, the inputs the logits came from, when the logits may come from a
        bfloat16 step (:meth:`loss_and_grad`): with ``precision="bf16"`` the samples they call
        fooled are re-checked by an fp32 forward, and only those it confirms count.
        """
        fooled = _fooled(logits, y, self.rule, head_weights(self.model, logits), self.targeted)
        if x_adv is None or self.precision == "fp32" or not fooled.any():
            return fooled
        check = fooled.nonzero().squeeze(1)
        with torch.no_grad():
            logits = self.logits(x_adv[check])
        fooled[check] = _fooled(logits, y[check], self.rule, head_weights(self.model, logits), self.targeted)
        return fooled

    def ball(self, x: torch.Tensor) -> Ball:
        """This attack's threat model around clean inputs ``x``."""
        return Ball(x, self.eps, self.norm)

    def best_of_restarts(
        self, x: torch.Tensor, y: torch.Tensor, restarts: int, run: Callable[..., torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``run(x, y) -> x_adv`` up to ``restarts`` times and keep each sample's worst case.

        Each restart only attacks the samples that no earlier run fooled (judged by the
        decision rule, by an fp32 forward); among points that fool nobody, the highest
        objective wins. Costs one extra forward per restart, so a single run skips the bookkeeping.

        With ``targets`` ``[B, K]`` (classes to aim at, success still untargeted), the runs are
        ``run(x, y, target)`` for each column in turn, ``restarts`` runs each, again only on the
        samples still robust: the top-k targeted attacks (APGDT, PGDT).
        """
        if restarts == 1 and targets is None:
            return run(x, y)
        x_best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for target in [None] if targets is None else targets.unbind(1):
            for _ in range(restarts):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return x_best
                aim = None if target is None else target[todo]
                x_adv = run(x[todo], y[todo]) if aim is None else run(x[todo], y[todo], aim)
                with torch.no_grad():
                    logits = self.logits(x_adv)
                    loss = self.loss(logits, y[todo], aim)
                now_fooled = self.fooled(logits, y[todo])
                better = now_fooled | (loss > best_loss[todo])
                x_best[todo[better]] = x_adv[better]
                best_loss[todo[better]] = loss[better].to(best_loss.dtype)
                fooled[todo] = now_fooled
        return x_best

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # The model's own contract (an AuxModel's input size) where it has one, else the pixel box.
        check = getattr(self.model, "check_input", None)
        check(x, "inputs") if check is not None else check_pixels(x, "inputs")
        # Labels (or targets) outside the classes would index out of range inside the objectives: checked
        # here when the model states its class count, else against the first forward's logits.
        classes = (getattr(self.model, "spec", None) or {}).get("num_classes")
        check_labels(y, x.shape[0], classes or None, self._label_kind())
        self._unchecked_labels = None if classes else y
        if self.norm == "l2" and self.eps is not None and self.eps > math.sqrt(x[0].numel()):
            raise ValueError(f"l2 eps {self.eps} exceeds sqrt({x[0].numel()}), the diameter of the pixel box")

    def _label_kind(self) -> str:
        return "targets" if self.targeted else "labels"
