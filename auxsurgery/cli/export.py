"""``auxsurgery export``: a checkpoint to a deployable torch.export program and/or ONNX model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..evaluation import check_compatible, collect, load_eval_data
from ..export import check_export_rule, check_parity, export_model
from .backbone_options import ModelFactory, load_checkpoint
from .options import DataRoot, Json, Out, Points, messages, print_json, results


def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `auxsurgery attach`, `train`, `defend` or "
                                                "auxsurgery.save."),
    format: str = typer.Option("pt2", "--format", help="pt2 (torch.export program), onnx (opset 18), or both."),
    rule: str = typer.Option("vote", help="Decision rule inside the model: any registered rule (vote, score, public, "
                                          "private, crossmax, crossmax:k=2, mean-logits, ...), or all (the vote's "
                                          "and the score's labels and scores, plus every head's logits)."),
    out: Out = None,
    check: Optional[str] = typer.Option(None, help="Check parity with the PyTorch model on this data: a dataset name, "
                                                   "an ImageFolder path or a .pt file of {'x', 'y'}."),
    n: Points = 256,  # with --check: the images compared
    tolerance: float = typer.Option(1e-4, help="With --check: the largest score difference accepted."),
    data_root: DataRoot = None,
    model_factory: ModelFactory = None,
    opset: int = typer.Option(18, help="ONNX opset (>= 18)."),
    as_json: Json = False,
):
    """Export a checkpoint with its decision rule inside: input [0, 1] pixels of any batch size, outputs the
    rule's label and scores. ONNX needs the export extra: pip install 'auxsurgery\\[export]'.

    Writes NAME.pt2 and/or NAME.onnx (NAME: the checkpoint's) in the folder --out (default: beside the
    checkpoint); with one --format, --out may name the file itself (--out deploy/model.onnx). With --check, runs the
    exported files and the PyTorch model on the same images and exits 1 unless every label agrees and every
    score is within --tolerance.

    Example: auxsurgery export runs/demo/best.safetensors --format both --out deploy --check synthetic --points 256
    """
    rule = check_export_rule(rule)
    if format not in ("pt2", "onnx", "both"):
        raise ValueError(f"unknown --format {format!r}; valid: pt2, onnx, both")
    if n < 1:
        raise ValueError(f"--points must be >= 1, got {n}")
    aux = load_checkpoint(checkpoint, model_factory)
    x = None
    if check:  # before the export: a wrong dataset should fail fast
        samples, classes, shape = load_eval_data(check, data_root, n)
        check_compatible(aux.spec, classes, shape, check)
        x, _, _ = collect(samples, n)
    written = export_model(aux, _export_stem(checkpoint, out, format), format=format, rule=rule, opset=opset)
    parity = [check_parity(aux, path, x) for path in written.values()] if x is not None else []
    ok = all(report.ok(tolerance) for report in parity)
    if as_json:
        print_json({"files": {k: str(v) for k, v in written.items()}, "rule": rule,
                    "parity": [report.to_dict() for report in parity], "tolerance": tolerance,
                    "ok": ok if parity else None})
    else:
        for fmt, path in written.items():
            results.print(f"{fmt}: {path}")
        for report in parity:
            verdict = "[green]ok[/green]" if report.ok(tolerance) else "[red]MISMATCH[/red]"
            results.print(f"{verdict} {report.summary()}")
    for path in written.values():
        messages.print(f"wrote {path}")
    if not ok:
        messages.print(f"[red]the exported model disagrees with the PyTorch model beyond --tolerance {tolerance:g}")
        raise typer.Exit(1)


_SUFFIXES = {".pt2": "pt2", ".onnx": "onnx"}


def _export_stem(checkpoint: Path, out: Path | None, format: str) -> Path:
    """Where the exported files go, without suffix: ``--out FOLDER/<checkpoint name>``, or ``--out FILE`` itself."""
    if out is None:
        return checkpoint.parent / checkpoint.stem
    named = _SUFFIXES.get(out.suffix)
    if named is None:
        return out / checkpoint.stem
    if format != named:
        raise ValueError(f"--out {out} names a .{named} file but --format is {format}: pass --format {named}, or a "
                         "folder as --out")
    return out.parent / out.stem
