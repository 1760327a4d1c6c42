"""Export coverage: can an AuxModel of every torchvision classifier and of a seeded subset of the coverage
benchmark's timm sample be exported (torch.export .pt2 and ONNX), and do the artifacts agree with PyTorch?

    OMP_NUM_THREADS=1 nohup python benchmarks/export_coverage.py --write-results --resume \
        > benchmarks/results/export_coverage/run.log 2>&1 &

Per model, in a forked worker (a hang becomes a ``timeout`` record, a memory blow-up a ``memory`` one):

1. build with random weights (``num_classes=10``); models above ``--max-params-m`` are skipped;
2. input size: the coverage run's size for the model when it has one, else the first of ``--sizes`` the
   surgery accepts, else the model's default; attach ``auto:3`` with the default heads;
3. pt2: ``torch.export`` of trunk + heads + rules (rule ``all``: both rules' labels and scores and every
   head's logits) traced at batch 2 with a dynamic batch (if only a static batch exports, that is
   recorded), saved and loaded back with ``torch.export.load``, run at batch 3 against PyTorch;
4. onnx: the dynamo exporter (opset 18) from the same program, run by onnxruntime at batch 3 against PyTorch.

Parity = label agreement of the vote and score rules, and the largest score and logit differences.
Results: JSON (records + summary; rewritten after every model, so ``--resume`` continues) and Markdown
under benchmarks/results/export_coverage/.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import multiprocessing as mp
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch
import torchvision

from auxsurgery.provenance import machine, source_commit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "export_coverage"
COVERAGE_JSON = HERE / "results" / "coverage" / "coverage.json"
TOLERANCE = 1e-4  # largest score difference counted as parity


def _coverage_module():
    """benchmarks/coverage.py, for its model lists (the same timm sample) and worker helpers."""
    spec = importlib.util.spec_from_file_location("auxsurgery_coverage_benchmark", HERE / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cov = _coverage_module()


def plan_models(timm_subset: int, timm_sample: int, seed: int) -> list[dict]:
    """Every torchvision classifier, then ``timm_subset`` models drawn (seeded) from coverage.py's timm sample."""
    sample = cov.timm_sample(timm_sample, seed)
    picked = sorted(random.Random(seed).sample(range(len(sample)), min(timm_subset, len(sample))))
    return cov.torchvision_models() + [sample[i] for i in picked]


def coverage_sizes() -> dict:
    """``(source, name) -> input size`` of the passing records of the coverage run, if it is there."""
    if not COVERAGE_JSON.is_file():
        return {}
    records = json.loads(COVERAGE_JSON.read_text()).get("records", [])
    return {(r["source"], r["name"]): r["input_size"] for r in records
            if r.get("status") == "ok" and r.get("input_size")}


# ---------------------------------------------------------------------------------------------
# The per-model check (in a forked worker)
# ---------------------------------------------------------------------------------------------

def _category(err: BaseException) -> str:
    if cov._is_memory(err):
        return "memory"
    text = f"{type(err).__name__}: {err}"
    for key, category in (("MissingExportExtra", "extra-missing"), ("GuardOnDataDependent", "data-dependent"),
                          ("data-dependent", "data-dependent"), ("Constraints violated", "dynamic-batch"),
                          ("dynamic", "dynamic-batch"), ("Unsupported", "unsupported-op"),
                          ("not supported", "unsupported-op"), ("No decomposition", "unsupported-op"),
                          ("DispatchError", "onnx-translation"), ("ConversionError", "onnx-translation")):
        if key in text:
            return category
    return "error"


def _parity(report) -> dict:
    return {"batch_sizes": report.batch_sizes, "agreement": report.label_agreement,
            "max_score_diff": report.max_score_diff, "max_logit_diff": report.max_logit_diff,
            "ok": report.ok(TOLERANCE)}


def check_model(entry: dict, sizes: list[list[int]], seed: int, workdir: str, report) -> dict:
    import auxsurgery
    from auxsurgery.export import (
        RuleOutputs,
        _save_onnx,
        _save_pt2,
        _torch_export,
        check_parity,
        load_exported,
    )
    from auxsurgery.export import _metadata as export_metadata

    rec: dict = {"status": "fail", "category": None, "error": None, "timings": {}}
    began = time.perf_counter()

    def timed(stage):
        """Record the seconds since the previous timed stage under ``stage``, and return them."""
        rec["timings"][stage] = round(time.perf_counter() - began - sum(rec["timings"].values()), 3)
        return rec["timings"][stage]

    def fail(stage, err=None, message=None, category=None):
        rec.update(status="fail", failed_stage=stage, category=category or (_category(err) if err else stage),
                   error=message or cov._short(err))
        if err is not None:
            rec["origin"] = cov._origin(err)
        return rec

    torch.manual_seed(seed)
    report("build")
    try:
        backbone = auxsurgery.build_backbone(f"{entry['source']}:{entry['name']}", num_classes=10)
    except Exception as err:
        return fail("build", err)
    rec["params_m"] = round(sum(p.numel() for p in backbone.parameters()) / 1e6, 3)
    timed("build")
    if entry.get("max_params_m") and rec["params_m"] > entry["max_params_m"]:
        rec.update(status="skipped", category="too-large",
                   error=f"{rec['params_m']:.0f}M parameters > --max-params-m {entry['max_params_m']:g}")
        return rec

    report("attach")
    default = list(backbone.default_input_size)
    aux, errors = None, {}
    for size in [s for s in sizes if s[0] == default[0] and min(s[1:]) <= min(default[1:])] + [default]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aux = auxsurgery.attach_aux_blocks(backbone, at="auto:3", input_size=size)
            rec["input_size"] = size
            break
        except Exception as err:
            errors["x".join(map(str, size))] = cov._short(err, 200)
            if cov._is_memory(err):
                return fail("attach", err)
    if aux is None:
        return fail("attach", message="; ".join(f"{k}: {v}" for k, v in errors.items()), category="attach")
    rec["method"], rec["attach_points"] = aux.spec["method"], list(aux.attach_points)
    aux.eval()
    timed("attach")

    gen = torch.Generator().manual_seed(seed + 1)
    example = torch.rand(2, *rec["input_size"], generator=gen)
    x = torch.rand(3, *rec["input_size"], generator=gen)  # parity at another batch size than the traced one
    meta = export_metadata(aux, "all")
    base = Path(workdir) / "model"

    # --- pt2
    report("torch.export")
    pt2: dict = {"status": "fail"}
    rec["pt2"] = pt2
    program = None
    try:
        program = _torch_export(RuleOutputs(aux, "all").eval(), example, dynamic_batch=True)
        pt2["dynamic_batch"] = True
    except Exception as err:
        pt2.update(category=_category(err), error=cov._short(err), origin=cov._origin(err))
        try:  # does a static batch export? Then it is the dynamic batch that fails.
            program = _torch_export(RuleOutputs(aux, "all").eval(), example, dynamic_batch=False)
            pt2.update(dynamic_batch=False, category="dynamic-batch", static_export="ok")
        except Exception as err2:
            pt2["static_error"] = cov._short(err2)
    pt2["export_s"] = timed("torch.export")
    if program is not None:
        report("pt2-save-load-parity")
        try:
            path = base.with_suffix(".pt2")
            _save_pt2(program, str(path), meta)
            pt2["size_mb"] = round(path.stat().st_size / 2**20, 2)
            inputs = x if pt2["dynamic_batch"] else example  # a static program runs at its own batch only
            pt2["parity"] = _parity(check_parity(aux, load_exported(path), inputs, batch_size=3))
            path.unlink()
            if pt2["dynamic_batch"]:
                pt2["status"] = "ok" if pt2["parity"]["ok"] else "mismatch"
            else:
                pt2["status"] = "static-only"
        except Exception as err:
            pt2.update(status="fail", category=_category(err), error=cov._short(err), origin=cov._origin(err),
                       failed_stage="save-load-parity")
        timed("pt2-save-load-parity")

    # --- onnx (from the same program)
    onnx: dict = {"status": "fail"}
    rec["onnx"] = onnx
    if program is None:
        onnx.update(category="no-program", error="torch.export failed, so there is no program to convert")
    else:
        report("onnx-export")
        try:
            path = _save_onnx(program, base.with_suffix(".onnx"), meta, 18)
            onnx["size_mb"] = round(sum(p.stat().st_size for p in Path(workdir).glob("model.onnx*")) / 2**20, 2)
        except Exception as err:
            onnx.update(category=_category(err), error=cov._short(err), origin=cov._origin(err))
            path = None
        onnx["export_s"] = timed("onnx-export")
        if path is not None:
            report("onnx-parity")
            try:
                onnx["parity"] = _parity(check_parity(aux, load_exported(path, threads=1),
                                                      x if pt2.get("dynamic_batch") else example, batch_size=3))
                onnx["status"] = ("ok" if onnx["parity"]["ok"] else "mismatch") if pt2.get("dynamic_batch") \
                    else "static-only"
            except Exception as err:
                onnx.update(category=_category(err), error=cov._short(err), origin=cov._origin(err),
                            failed_stage="onnx-parity")
            timed("onnx-parity")
            for leftover in Path(workdir).glob("model.onnx*"):
                leftover.unlink()
    rec["status"] = "ok" if pt2["status"] == "ok" and onnx["status"] == "ok" else "fail"
    if rec["status"] != "ok":
        bad = pt2 if pt2["status"] != "ok" else onnx
        which = "pt2" if bad is pt2 else "onnx"
        rec["category"] = f"{which}:{bad.get('category') or bad['status']}"
        rec["error"] = bad.get("error") or (f"parity: {bad.get('parity')}" if bad.get("parity") else bad["status"])
    rec["seconds_worker"] = round(time.perf_counter() - began, 2)
    return rec


def _worker(entry, sizes, seed, conn):
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    warnings.filterwarnings("ignore")

    def report(stage):
        conn.send(("stage", stage))

    with tempfile.TemporaryDirectory(prefix="export_coverage_") as workdir:
        try:
            rec = check_model(entry, sizes, seed, workdir, report)
        except BaseException as err:  # noqa: BLE001 - anything the stages did not catch
            rec = {"status": "fail", "category": "memory" if cov._is_memory(err) else "harness",
                   "error": cov._short(err), "origin": cov._origin(err)}
    try:
        conn.send(("result", rec))
    except Exception as err:
        conn.send(("result", {"status": "fail", "category": "harness", "error": cov._short(err)}))
    conn.close()


def run_one(entry: dict, sizes: list[list[int]], args) -> dict:
    """``check_model`` in a forked worker under a wall-clock and memory limit."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(entry, sizes, args.seed, child), daemon=True)
    stage, rec, peak, killed, seconds = cov.watch_worker(proc, parent, child, args.timeout, args.max_mem_gb)
    if rec is None:
        reason = {"timeout": f"no result within {args.timeout:g} s", "memory": f"RSS above {args.max_mem_gb:g} GiB"}
        rec = {"status": "fail", "category": killed or ("memory" if proc.exitcode == -9 else "crash"),
               "error": f"{reason.get(killed, f'worker died with exit code {proc.exitcode}')} (stage '{stage}')",
               "failed_stage": stage}
    entry = {k: v for k, v in entry.items() if k != "max_params_m"}
    return {**entry, **rec, "seconds": round(seconds, 2), "peak_rss_gb": round(peak, 2),
            "limits": {"timeout": args.timeout, "max_mem_gb": args.max_mem_gb, "max_params_m": args.max_params_m},
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "auxsurgery_commit": source_commit()}


# ---------------------------------------------------------------------------------------------
# Summary and reports
# ---------------------------------------------------------------------------------------------

def summarize(records: list[dict]) -> dict:
    summary: dict = {"total": len(records), "by_source": {}}
    for source in sorted({r["source"] for r in records}):
        rs = [r for r in records if r["source"] == source]
        tried = [r for r in rs if r["status"] != "skipped"]
        s = {"models": len(rs), "skipped": len(rs) - len(tried),
             "attached": sum(1 for r in tried if r.get("method")),
             "ok": sum(1 for r in tried if r["status"] == "ok")}
        for fmt in ("pt2", "onnx"):
            got = [r[fmt] for r in tried if isinstance(r.get(fmt), dict)]
            exported = [g for g in got if g["status"] in ("ok", "mismatch", "static-only")]
            agree = [g for g in got if g.get("parity") and all(a == 1.0 for a in g["parity"]["agreement"].values())]
            diffs = [max(g["parity"]["max_score_diff"].values()) for g in got if g.get("parity")]
            times = [g["export_s"] for g in got if g.get("export_s") is not None and g["status"] != "fail"]
            dynamic = sum(1 for g in got if g["status"] in ("ok", "mismatch"))
            s[fmt] = {"exported": len(exported), "dynamic_batch": dynamic,
                      "labels_agree": len(agree), "parity_ok": sum(1 for g in got if g["status"] == "ok"),
                      "max_score_diff": max(diffs) if diffs else None,
                      "median_score_diff": statistics.median(diffs) if diffs else None,
                      "median_export_s": round(statistics.median(times), 2) if times else None}
        cats: dict = {}
        for r in rs:
            if r["status"] != "ok":
                cats[r["category"]] = cats.get(r["category"], 0) + 1
        s["failures_by_category"] = dict(sorted(cats.items(), key=lambda kv: -kv[1]))
        s["seconds"] = round(sum(r.get("seconds", 0) for r in rs), 1)
        summary["by_source"][source] = s
    summary["ok"] = sum(1 for r in records if r["status"] == "ok")
    return summary


def _md(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def _fmt_parity(part: dict | None) -> str:
    if not isinstance(part, dict) or "status" not in part:
        return ""
    if not part.get("parity"):
        return part["status"]
    p = part["parity"]
    agree = "/".join(f"{100 * a:.0f}%" for a in p["agreement"].values())
    return f"{part['status']}: labels {agree}, diff {max(p['max_score_diff'].values()):.1e}"


def write_markdown(path: Path, data: dict) -> None:
    meta, summary, records = data["meta"], data["summary"], data["records"]
    done = len(records)
    lines = ["# auxsurgery export coverage", "",
             f"- Command(s): {'; '.join(f'`{c}`' for c in meta.get('commands', [meta['command']]))}",
             f"- Date: {meta['started']} (last update {meta['updated']})",
             "- Machines: " + "; ".join(meta.get("machines") or [meta["machine"]]),
             f"- Versions: {meta['versions']}",
             f"- Settings: every torchvision classifier plus {meta['timm_subset']} timm models drawn with seed "
             f"{meta['seed']} from coverage.py's sample of {meta['timm_sample']}; random weights, num_classes=10, "
             "attach `auto:3`, default heads; input = the coverage run's size for the model (else the first of "
             f"{meta['sizes']} that attaches, else the default); rule `all`; traced at batch 2 with a dynamic "
             f"batch, parity at batch 3; torch threads 1; limits {meta['timeout']:g} s and {meta['max_mem_gb']:g} GiB "
             f"per model; models above {meta['max_params_m']:g}M parameters skipped",
             f"- Models planned: {meta['planned']}; done: {done}"
             + (" (INCOMPLETE: rerun with --resume)" if done < meta["planned"] else ""),
             f"- Wall time so far: {meta['wall_seconds'] / 60:.1f} min",
             "",
             "ok = the pt2 program exports with a dynamic batch, reloads, and agrees with PyTorch (vote and score "
             f"labels 100%, scores within {TOLERANCE:g}), and so does the ONNX model under onnxruntime.",
             "", "## Summary", "",
             "| library | models | skipped | attached | pt2 exported (dynamic) | pt2 parity ok | onnx exported "
             "(dynamic) | onnx parity ok | all ok | max score diff pt2 / onnx | median export s pt2 / onnx |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, s in summary["by_source"].items():
        p, o = s["pt2"], s["onnx"]

        def e(v):
            return "-" if v is None else f"{v:.1e}"
        lines.append(f"| {source} | {s['models']} | {s['skipped']} | {s['attached']} | {p['exported']} "
                     f"({p['dynamic_batch']}) | {p['parity_ok']} | {o['exported']} ({o['dynamic_batch']}) | "
                     f"{o['parity_ok']} | {s['ok']} | {e(p['max_score_diff'])} / {e(o['max_score_diff'])} | "
                     f"{p['median_export_s']} / {o['median_export_s']} |")
    lines += ["", "## Failures by category", "", "| library | category | count |", "|---|---|---|"]
    for source, s in summary["by_source"].items():
        for cat, n in s["failures_by_category"].items():
            lines.append(f"| {source} | {cat} | {n} |")
    fails = [r for r in records if r["status"] != "ok"]
    lines += ["", f"## Every model that is not ok ({len(fails)})", "",
              "| library | model | method | category | pt2 | onnx | cause |", "|---|---|---|---|---|---|---|"]
    for r in sorted(fails, key=lambda r: (r["source"], str(r["category"]), r["name"])):
        lines.append(f"| {r['source']} | {r['name']} | {r.get('method') or ''} | {r['category']} | "
                     f"{_md(_fmt_parity(r.get('pt2')))} | {_md(_fmt_parity(r.get('onnx')))} | "
                     f"{_md((r.get('error') or '')[:400])} |")
    lines += ["", "## All models", "",
              "| library | model | status | input | method | params M | pt2 | pt2 s | onnx | onnx s | total s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        size = "x".join(map(str, r["input_size"])) if r.get("input_size") else ""
        pt2, onnx = r.get("pt2") or {}, r.get("onnx") or {}
        lines.append(f"| {r['source']} | {r['name']} | {r['status']} | {size} | {r.get('method') or ''} | "
                     f"{r.get('params_m', '')} | {_md(_fmt_parity(pt2))} | {pt2.get('export_s', '')} | "
                     f"{_md(_fmt_parity(onnx))} | {onnx.get('export_s', '')} | {r.get('seconds', '')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("torchvision", "timm", "all"), default="all")
    ap.add_argument("--timm-subset", type=int, default=40, help="timm models drawn from coverage.py's sample")
    ap.add_argument("--timm-sample", type=int, default=400, help="coverage.py's --timm-sample (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=None, help="comma-separated names (name or source:name) to run only")
    ap.add_argument("--limit", type=int, default=None, help="run only the first N planned models")
    ap.add_argument("--sizes", default="64,96", help="square sides tried before the default size")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--max-mem-gb", type=float, default=8.0, help="kill a worker above this RSS")
    ap.add_argument("--max-params-m", type=float, default=250.0, help="skip bigger models (0: none skipped)")
    cov.add_output_options(ap)
    ap.add_argument("--resume", action="store_true", help="keep the records in --json and run the rest")
    ap.add_argument("--rerun", default="", help="with --resume: categories to run again (e.g. timeout,memory), or all")
    ap.add_argument("--report-only", action="store_true", help="rewrite --markdown from --json; run nothing")
    args = ap.parse_args(argv)
    cov.output_paths(ap, args, {"json": str(RESULTS / "export_coverage.json"),
                                "markdown": str(RESULTS / "export_coverage.md")})
    json_path, md_path = Path(args.json), Path(args.markdown)
    if args.report_only:
        data = json.loads(json_path.read_text())
        data["summary"] = summarize(data["records"])
        cov.write_json(str(json_path), data)
        write_markdown(md_path, data)
        print(json.dumps(data["summary"], indent=1))
        return 0
    torch.set_num_threads(1)
    plan = plan_models(args.timm_subset, args.timm_sample, args.seed)
    if args.source != "all":
        plan = [e for e in plan if e["source"] == args.source]
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        plan = [e for e in plan if e["name"] in wanted or f"{e['source']}:{e['name']}" in wanted]
    if args.limit is not None:
        plan = plan[: args.limit]
    sides = [int(s) for s in args.sizes.split(",") if s.strip()]
    known_sizes = coverage_sizes()

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = {"command": command, "commands": [command], "started": now, "updated": now, "machine": machine(),
            "machines": [machine()],
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
                        + _onnx_versions(),
            "seed": args.seed, "timm_subset": args.timm_subset, "timm_sample": args.timm_sample, "sizes": sides,
            "timeout": args.timeout, "max_mem_gb": args.max_mem_gb, "max_params_m": args.max_params_m,
            "planned": len(plan), "wall_seconds": 0.0}
    records: list[dict] = []
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        rerun = {c.strip() for c in args.rerun.split(",") if c.strip()}
        planned = {(e["source"], e["name"]) for e in plan}

        def stale(r):
            return "all" in rerun or (r["status"] != "ok" and (r.get("category") in rerun
                                                                or str(r.get("category")).split(":")[-1] in rerun))

        records = [r for r in old.get("records", []) if not (stale(r) and (r["source"], r["name"]) in planned)]
        om = old.get("meta", {})
        meta.update(started=om.get("started", now), wall_seconds=om.get("wall_seconds", 0.0),
                    planned=max(len(plan), om.get("planned", 0)),
                    commands=[*om.get("commands", [om.get("command")]), command],
                    machines=list(dict.fromkeys([*om.get("machines", []), machine()])))
    done = {(r["source"], r["name"]) for r in records}
    todo = [e for e in plan if (e["source"], e["name"]) not in done]
    print(f"{len(plan)} models planned, {len(done)} already done, {len(todo)} to run", flush=True)

    def save():
        meta["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        order = {(e["source"], e["name"]): i for i, e in enumerate(plan)}
        records.sort(key=lambda r: order.get((r["source"], r["name"]), 1 << 30))
        data = {"meta": meta, "summary": summarize(records), "records": records}
        cov.write_json(str(json_path), data)
        return data

    wall0, base_wall = time.perf_counter(), meta["wall_seconds"]
    for i, entry in enumerate(todo, 1):
        known = known_sizes.get((entry["source"], entry["name"]))
        sizes = ([known] if known else []) + [[3, s, s] for s in sides]
        rec = run_one({**entry, "max_params_m": args.max_params_m}, sizes, args)
        records.append(rec)
        meta["wall_seconds"] = round(base_wall + time.perf_counter() - wall0, 1)
        data = save()
        extra = "" if rec["status"] == "ok" else f" [{rec['category']}] {(rec.get('error') or '')[:160]}"
        print(f"[{i}/{len(todo)}] {entry['source']}:{entry['name']} {rec['status']} "
              f"pt2={_fmt_parity(rec.get('pt2')) or '-'} onnx={_fmt_parity(rec.get('onnx')) or '-'} "
              f"{rec['seconds']:.1f}s{extra}", flush=True)
        if i % 10 == 0:
            write_markdown(md_path, data)
    data = save()
    write_markdown(md_path, data)
    print(json.dumps(data["summary"], indent=1))
    return 0


def _onnx_versions() -> str:
    out = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            out.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            out.append(f"{name} missing")
    return ", " + ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
