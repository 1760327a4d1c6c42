"""Exporting an AuxModel for deployment: trunk, heads and decision rule in one artifact.

:func:`export_model` writes a ``torch.export`` program (``.pt2``, loaded with
``torch.export.load``) and/or an ONNX model (the dynamo exporter, opset 18) whose input is a
batch of [0, 1] pixels of any batch size and whose outputs are the rule's decision::

    from auxsurgery.export import export_model, check_parity
    paths = export_model(aux, "deploy/model", format="both", rule="vote")
    print(check_parity(aux, paths["onnx"], x).to_dict())   # labels agree? largest score difference?

Outputs per ``rule``: any registered decision rule (:mod:`auxsurgery.rules`: ``vote``, ``score``,
``crossmax``, ``crossmax:k=2``, your own...) gives ``label`` ``[B]`` (int64) and ``scores`` ``[B, C]``
(:func:`auxsurgery.rules.rule_scores`, computed inside the exported program); ``all`` gives ``label_vote, scores_vote, label_score,
scores_score`` and every head's ``logits`` ``[H, B, C]`` (head 0 the backbone's). Normalisation is
inside, as in the PyTorch model. An image with a non-finite pixel or one outside [0, 1], which the
PyTorch model refuses with an error, gets label ``-1`` (``invalid_label`` in the stored metadata;
its scores mean nothing).

ONNX needs the ``export`` extra (``pip install 'auxsurgery[export]'``: onnx, onnxscript,
onnxruntime), imported only when ONNX is asked for. :class:`OnnxClassifier` runs an exported ONNX
model as a ``[B, C]`` classifier, so the black-box attacks (Square, Boundary) can attack the
deployed artifact itself.
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import re
import time
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ._utils import atomic_write, check_output_folder, preserved_state, refuse_link
from .model import AuxModel
from .rules import check_rule, get_rule, rule_scores
from .provenance import release

__all__ = [
    "FORMATS", "ExportError", "ExportedModel", "MissingExportExtra", "OnnxClassifier", "ParityReport",
    "RuleOutputs", "check_export_rule", "check_parity", "export_model", "load_exported", "output_names",
]

# Besides the registered rules: the vote's and the score's outputs together, plus every head's logits.
ALL_RULES = "all"
FORMATS = ("pt2", "onnx")
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx"}
INPUT_NAME = "pixels"
# The label of an image with a non-finite pixel or one outside [0, 1], which the PyTorch model refuses.
INVALID_LABEL = -1
META_KEY = "auxsurgery_export"  # ONNX metadata_props key; the .pt2 extra file is META_KEY + ".json"
OPSET = 18
EXTRA_HINT = "pip install 'auxsurgery[export]'"
# Above this many bytes of weights ONNX keeps them in an external ``.data`` file (protobuf's 2 GB cap).
INLINE_ONNX_BYTES = 1_800_000_000


class ExportError(ValueError):
    """A model that cannot be exported, with the reason."""


class MissingExportExtra(ImportError, ValueError):
    """ONNX export or inference asked for without the ``export`` extra installed (an ImportError; also a
    ValueError, so the command line reports it as one line, as it does every user error)."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: blocked
        return False


def require_onnx(*modules: str) -> None:
    """Raise :class:`MissingExportExtra` (one line: how to install) unless ``modules`` are importable."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExportExtra(f"ONNX support needs the export extra ({', '.join(missing)} missing): {EXTRA_HINT}")


def output_names(rule: str) -> list[str]:
    """The exported model's output names for ``rule``."""
    if rule == ALL_RULES:
        return ["label_vote", "scores_vote", "label_score", "scores_score", "logits"]
    return ["label", "scores"]


def check_export_rule(rule: str) -> str:
    """The canonical name of an export rule: a registered decision rule, or ``all``; else a ValueError."""
    if rule == ALL_RULES:
        return rule
    try:
        return check_rule(rule)
    except ValueError as error:
        raise ValueError(f"{error} An export also takes {ALL_RULES!r} (the vote's and the score's outputs and "
                         "every head's logits).") from None


def _formats(format: str | Sequence[str]) -> list[str]:
    items = [format] if isinstance(format, str) else list(format)
    items = [f for item in items for f in (FORMATS if item == "both" else [item])]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ValueError(f"unknown export format {', '.join(bad) or format!r}; valid: pt2, onnx, both")
    return list(dict.fromkeys(items))


class RuleOutputs(nn.Module):
    """An AuxModel plus its decision rule as one module: pixels -> (label, scores[, ...]).

    What is exported; :func:`check_parity` runs it as the PyTorch reference.
    """

    def __init__(self, aux_model: AuxModel, rule: str = "vote"):
        super().__init__()
        self.aux_model = aux_model
        self.rule = check_export_rule(rule)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.aux_model(pixels)
        alpha = self.aux_model.alpha
        # The PyTorch model refuses such images (check_input); a deployed graph cannot raise, so it flags them.
        in_box = ((pixels >= 0) & (pixels <= 1)).flatten(1).all(1)  # False for NaN too

        def label(scores: torch.Tensor) -> torch.Tensor:
            return torch.where(in_box, scores.argmax(-1), INVALID_LABEL)

        if self.rule != ALL_RULES:
            scores = rule_scores(logits, self.rule, alpha)
            return label(scores), scores
        vote, score = rule_scores(logits, "vote", alpha), rule_scores(logits, "score", alpha)
        return label(vote), vote, label(score), score, logits


def _metadata(aux: AuxModel, rule: str) -> dict:
    """What a deployment needs to know about the artifact, stored inside it."""
    spec = dict(aux.spec, alpha=aux.alpha.tolist())
    return {"format": 1, **release(), "model": _model_name(aux), "rule": rule,
            "input": INPUT_NAME,
            "outputs": output_names(rule), "input_size": list(aux.input_size or ()), "pixels": "[0, 1]",
            "invalid_label": INVALID_LABEL,  # an image with a NaN, inf or out-of-[0, 1] pixel: its label(s)
            "num_classes": spec.get("num_classes"), "head_names": aux.head_names, "spec": spec}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(err: BaseException, limit: int = 600) -> str:
    """``Type: first line`` of ``err``, plus that of its innermost cause (where exporters say what failed)."""
    def line_of(e: BaseException) -> str:
        text = _ANSI.sub("", f"{type(e).__name__}: {e}").strip()
        return next((ln.strip() for ln in text.splitlines() if ln.strip()), text)

    inner = err
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    line = line_of(err) if inner is err else f"{line_of(err)} ... caused by {line_of(inner)}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _model_name(aux: AuxModel) -> str:
    backbone = aux.spec.get("backbone") or {}
    return backbone.get("name") or type(aux.public_model()).__name__


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.export's chatter: on failure it prints the partial graph to stderr and logs
    warnings; the hook trunk's feature store (reset on every call) draws a UserWarning."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*was assigned during export.*")
            yield
    finally:
        logger.setLevel(level)


def _torch_export(module: RuleOutputs, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of ``module``, or an :class:`ExportError` with the reason."""
    aux = module.aux_model
    shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    try:
        with torch.no_grad(), _quiet():
            return torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependent, ...)
        reason = _first_line(err)
        if aux.spec.get("method") == "hooks":
            raise ExportError(
                f"{_model_name(aux)} attaches only through the forward-hook fallback (torch.fx cannot trace it), and "
                f"torch.export cannot export it either: {reason}") from err
        what = " with a dynamic batch size" if dynamic_batch else ""
        raise ExportError(f"torch.export cannot export {_model_name(aux)}{what}: {reason}") from err


def _save_pt2(program: torch.export.ExportedProgram, path: str, meta: dict) -> None:
    with open(path, "wb") as f:  # a file object: torch.export.save warns about names not ending in .pt2
        torch.export.save(program, f, extra_files={META_KEY + ".json": json.dumps(meta)})


def _save_onnx(program: torch.export.ExportedProgram, path: Path, meta: dict, opset: int) -> Path:
    """The ONNX model of ``program`` (dynamo exporter) at ``path``, with ``meta`` in its metadata."""
    require_onnx("onnx", "onnxscript")
    try:
        onnx_program = torch.onnx.export(program, f=None, input_names=[INPUT_NAME], output_names=meta["outputs"],
                                         opset_version=opset, dynamo=True, verbose=False)
    except Exception as err:
        raise ExportError(f"the ONNX exporter cannot convert {meta['model']}: {_first_line(err)}") from err
    onnx_program.model.metadata_props[META_KEY] = json.dumps(meta)
    size = sum(v.nbytes for v in program.state_dict.values()) + sum(
        v.nbytes for v in program.constants.values() if torch.is_tensor(v))
    if size < INLINE_ONNX_BYTES:
        return atomic_write(path, lambda tmp: onnx_program.save(tmp, external_data=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    for written in (path, path.with_name(path.name + ".data")):  # saved in place: never through a link
        refuse_link(written)
    onnx_program.save(path, external_data=True)  # beside it: <name>.data
    return path


def export_model(
    aux: AuxModel,
    path: str | Path,
    format: str | Sequence[str] = "pt2",
    rule: str = "vote",
    batch_size: int = 2,
    dynamic_batch: bool = True,
    opset: int = OPSET,
) -> dict[str, Path]:
    """Export ``aux`` with its decision rule; return ``{format: path}`` of the files written.

    Args:
        aux: the AuxModel (a checkpoint loaded with :func:`auxsurgery.load`); exported in eval
            mode (its own mode is restored afterwards).
        path: output file; its suffix is replaced per format (``model`` -> ``model.pt2``, ``model.onnx``).
        format: ``pt2`` (``torch.export.save``), ``onnx`` (``torch.onnx.export(dynamo=True)``), or ``both``.
        rule: ``vote`` or ``score`` (outputs ``label``, ``scores``), or ``all`` (both rules' labels and
            scores, plus every head's ``logits``).
        batch_size: batch of the example input traced, >= 2 (any batch size runs when ``dynamic_batch``).
        dynamic_batch: export with a symbolic batch dimension.
        opset: ONNX opset (>= 18).

    Networks attached through the forward-hook fallback (``aux.spec["method"] == "hooks"``) are
    exported when ``torch.export`` can trace them; otherwise an :class:`ExportError` says why.
    """
    if not isinstance(aux, AuxModel):
        raise TypeError(f"export_model takes an AuxModel (attach_aux_blocks or auxsurgery.load), "
                        f"got {type(aux).__name__}")
    rule = check_export_rule(rule)
    get_rule("vote" if rule == ALL_RULES else rule).check_heads(aux.num_heads)
    formats = _formats(format)
    if batch_size < (2 if dynamic_batch else 1):
        raise ValueError(f"batch_size must be >= 2 for a dynamic batch (torch.export specialises a batch of 1), "
                         f"got {batch_size}")
    if opset < 18:
        raise ValueError(f"opset must be >= 18 (the dynamo exporter's minimum), got {opset}")
    if "onnx" in formats:
        require_onnx("onnx", "onnxscript")
    if not aux.input_size:
        raise ValueError("the AuxModel has no input_size in its spec; attach it with input_size=(C, H, W)")
    param = next(aux.parameters())
    example = torch.rand(batch_size, *aux.input_size, generator=torch.Generator().manual_seed(0)).to(param.device)
    meta = _metadata(aux, rule)
    base = Path(path)
    base = base.with_suffix("") if base.suffix in SUFFIXES.values() else base
    check_output_folder(base.parent)
    written: dict[str, Path] = {}
    with preserved_state(aux):
        module = RuleOutputs(aux, rule).eval()
        program = _torch_export(module, example, dynamic_batch)
    if "pt2" in formats:
        target = base.with_name(base.name + SUFFIXES["pt2"])
        written["pt2"] = atomic_write(target, lambda tmp: _save_pt2(program, tmp, meta))
    if "onnx" in formats:
        written["onnx"] = _save_onnx(program, base.with_name(base.name + SUFFIXES["onnx"]), meta, opset)
    return written


# ---------------------------------------------------------------------------------------------
# Running an exported artifact
# ---------------------------------------------------------------------------------------------


def _onnx_session(path: str | Path, threads: int | None = None):
    require_onnx("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


@dataclass
class ExportedModel:
    """An exported artifact, runnable: ``model(x)`` -> ``{output name: tensor}`` (on ``x``'s device).

    Attributes:
        path, format: the file and ``pt2`` or ``onnx``.
        meta: the metadata stored at export (rule, outputs, input size, surgery spec), or {}.
        outputs: output names, in order.
    """

    path: Path
    format: str
    meta: dict
    outputs: list[str]
    run: Callable[[torch.Tensor], list[torch.Tensor]] = field(repr=False)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.outputs, self.run(x)))


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """Load a ``.pt2`` program (``torch.export.load``) or an ``.onnx`` model (onnxruntime) for inference."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        session = _onnx_session(path, threads)
        meta = json.loads(session.get_modelmeta().custom_metadata_map.get(META_KEY, "{}"))
        names = [o.name for o in session.get_outputs()]
        input_name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> list[torch.Tensor]:
            outs = session.run(None, {input_name: x.detach().cpu().float().numpy()})
            return [torch.from_numpy(o).to(x.device) for o in outs]

        return ExportedModel(path, "onnx", meta, names, run_onnx)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: expected a .pt2 (torch.export) or .onnx file")
    extra = {META_KEY + ".json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[META_KEY + ".json"] or "{}")
    module = program.module()
    names = meta.get("outputs") or [f"output_{i}" for i in range(len(program.graph_signature.user_outputs))]

    def run_pt2(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            out = module(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return ExportedModel(path, "pt2", meta, names, run_pt2)


@dataclass
class ParityReport:
    """How an exported artifact agrees with the PyTorch model on the same inputs.

    Attributes:
        label_agreement: per rule, the fraction of inputs whose labels agree.
        max_score_diff: per rule, the largest absolute difference of the scores.
        max_logit_diff: the largest absolute logit difference (``all`` artifacts), else None.
        batch_sizes: the batch sizes run (the artifact's batch size is dynamic).
    """

    path: str
    format: str
    rule: str
    n: int
    label_agreement: dict[str, float]
    max_score_diff: dict[str, float]
    max_logit_diff: float | None
    batch_sizes: list[int]
    seconds: dict[str, float]

    @property
    def agreement(self) -> float:
        """The lowest label agreement over the rules."""
        return min(self.label_agreement.values())

    @property
    def max_diff(self) -> float:
        """The largest score difference over the rules."""
        return max(self.max_score_diff.values())

    def ok(self, tolerance: float = 1e-4) -> bool:
        """Every label agrees and every score is within ``tolerance``."""
        return self.agreement == 1.0 and self.max_diff <= tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement, "max_diff": self.max_diff}

    def summary(self) -> str:
        """One line: the format, rule, agreement and largest difference."""
        rules = ", ".join(f"{r} {100 * a:.2f}% labels agree, max score diff {self.max_score_diff[r]:.2e}"
                          for r, a in self.label_agreement.items())
        return f"{self.format} ({Path(self.path).name}) on {self.n} inputs: {rules}"


def check_parity(
    aux: AuxModel,
    exported: str | Path | ExportedModel,
    x: torch.Tensor,
    rule: str | None = None,
    batch_size: int = 64,
) -> ParityReport:
    """Run the exported artifact and the PyTorch model on the same inputs ``x`` and compare.

    Args:
        aux: the PyTorch AuxModel the artifact was exported from.
        exported: the ``.pt2`` / ``.onnx`` path, or a :func:`load_exported` result.
        x: [0, 1] pixels ``[N, C, H, W]``, run in batches of ``batch_size`` (the last one smaller).
        rule: the artifact's rule (default: read from the artifact).
    """
    model = exported if isinstance(exported, ExportedModel) else load_exported(exported)
    stored = model.meta.get("rule")
    if rule is not None and stored is not None and rule != stored:
        raise ValueError(f"{model.path} was exported with rule {stored!r}, not {rule!r}")
    rule = check_export_rule(rule or stored or "vote")
    if len(model.outputs) != len(output_names(rule)):
        raise ValueError(f"{model.path} has outputs {model.outputs}; rule {rule!r} exports {output_names(rule)}")
    aux.check_input(x)
    device = next(aux.parameters()).device
    reference = RuleOutputs(aux, rule)
    got: list[list[torch.Tensor]] = []
    want: list[list[torch.Tensor]] = []
    seconds = {"exported": 0.0, "pytorch": 0.0}
    sizes = []
    with preserved_state(aux):
        reference.eval()
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            sizes.append(len(xb))
            began = time.perf_counter()
            got.append([t.cpu() for t in model.run(xb)])
            seconds["exported"] += time.perf_counter() - began
            began = time.perf_counter()
            with torch.no_grad():
                want.append([t.cpu() for t in reference(xb)])
            seconds["pytorch"] += time.perf_counter() - began
    batch_dim = {name: 1 if name == "logits" else 0 for name in output_names(rule)}  # logits: [H, B, C]
    outs = {name: (torch.cat([g[i] for g in got], batch_dim[name]), torch.cat([w[i] for w in want], batch_dim[name]))
            for i, name in enumerate(output_names(rule))}
    rules = ["vote", "score"] if rule == ALL_RULES else [rule]
    suffix = {r: (f"_{r}" if rule == ALL_RULES else "") for r in rules}
    agreement = {r: (outs["label" + suffix[r]][0] == outs["label" + suffix[r]][1]).float().mean().item() for r in rules}
    score_diff = {r: (outs["scores" + suffix[r]][0].float() - outs["scores" + suffix[r]][1].float()).abs().max().item()
                  for r in rules}
    logit_diff = ((outs["logits"][0].float() - outs["logits"][1].float()).abs().max().item()
                  if "logits" in outs else None)
    return ParityReport(str(model.path), model.format, rule, len(x), agreement, score_diff, logit_diff, sizes,
                        {k: round(v, 4) for k, v in seconds.items()})


class OnnxClassifier(nn.Module):
    """An exported ONNX model as a ``[B, C]`` classifier: ``model(x)`` returns the rule's scores.

    For the black-box attacks (:class:`~auxsurgery.attacks.Square`, :class:`~auxsurgery.attacks.Boundary`)
    on the deployed artifact itself: they call ``model(x)`` and judge a ``[B, C]`` output with
    rule ``public``, whose decision is the argmax of these scores, i.e. the exported rule's label.
    It has no gradients: gradient attacks on it raise a TypeError.

    Args:
        model: an ``.onnx`` path or an ``onnxruntime.InferenceSession``.
        output: the scores output to return (default ``scores``, or ``scores_vote`` for ``all``).
        log_probs: return the log of the normalised scores instead (as
            :class:`~auxsurgery.model.RuleClassifier` does), for libraries that expect logits.
        threads: onnxruntime's intra-op threads (default: torch's).
    """

    def __init__(self, model, output: str | None = None, log_probs: bool = False, threads: int | None = None):
        super().__init__()
        session = _onnx_session(model, threads) if isinstance(model, (str, Path)) else model
        self.__dict__["session"] = session  # not a module or tensor: kept out of the module tree
        self.input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        output = output or next((n for n in ("scores", "scores_vote") if n in names), None)
        if output not in names:
            raise ValueError(f"the ONNX model has outputs {names}; choose one of its scores outputs with output=...")
        self.output, self.log_probs = output, log_probs
        meta = session.get_modelmeta().custom_metadata_map.get(META_KEY)
        self.meta = json.loads(meta) if meta else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ONNX model's scores ``[B, C]`` (or log-probabilities) for pixels ``x`` in [0, 1]; no gradients."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise TypeError("OnnxClassifier runs onnxruntime and has no gradients: attack it with score- or "
                            "decision-based attacks (Square, Boundary), or attack the PyTorch model")
        (scores,) = self.session.run([self.output], {self.input_name: x.detach().cpu().float().numpy()})
        scores = torch.from_numpy(scores).to(device=x.device, dtype=x.dtype)
        if self.log_probs:
            scores = (scores / scores.sum(-1, keepdim=True)).clamp_min(1e-12).log()
        return scores
