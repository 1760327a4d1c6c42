"""Coverage benchmark: does ``attach_aux_blocks`` work on every torchvision classifier and
on a family-covering sample of timm architectures (random weights, CPU)?

    python benchmarks/coverage.py --source all --timm-sample 400 --threads 1 --timeout 120 \
        --write-results --resume

Each model runs in its own forked worker process (so a hang becomes a ``timeout`` record,
an out-of-memory kill a ``memory`` record, and a crash a ``crash`` record), through:

1. build (``build_backbone(..., num_classes=10)``, random weights);
2. input size: the first of ``--sizes`` (small, cheap) that the bare backbone accepts,
   else its ``default_input_size``; if the surgery fails at a small size it is retried at
   the default size and the small-size failure is recorded too;
3. attach with ``at="auto:3"``;
4. eval: ``aux(x)[0]`` equals ``aux.public_model()(x)`` exactly, ``predict(x, "vote")`` works;
5. train: sum of cross-entropy over all heads, backward, every head (and the trunk)
   gets finite gradients, one SGD step, then eval equivalence again (weights are shared).

A model succeeds when all of that passes. Results go to a JSON file (records + summary),
rewritten after every model so that ``--resume`` continues an interrupted run, and to a
Markdown report.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import random
import shlex
import sys
import time
import traceback
import warnings

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from auxsurgery.provenance import machine, source_commit  # noqa: E402

STAGES = ("build", "input-size", "attach", "forward-eval", "equivalence", "predict",
          "train-forward", "backward", "gradients", "sgd-step", "equivalence-after-step")

# Innermost auxsurgery function on the traceback -> failure category (first match wins,
# searching from the innermost frame outwards).
AUX_CATEGORIES = {
    "auto_points": "auto-placement",
    "_stage_picks": "auto-placement",
    "_isotropic_picks": "auto-placement",
    "_stage_outputs": "auto-placement",
    "infer_layout": "layout",
    "build_head": "head",
    "default_head": "head",
    "get_head_factory": "head",
    "_check_points": "attach-point check",
    "HookTrunk.__init__": "hooks",
    "__init__": "hooks",
    "node_names": "trace",
    "_trace": "trace",
    "build_trunk": "trace",
    "resolve_node": "trace",
}


# ---------------------------------------------------------------------------------------------
# Model lists
# ---------------------------------------------------------------------------------------------

def torchvision_models() -> list[dict]:
    from torchvision.models import _api

    out = []
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        module = _api.BUILTIN_MODELS[name].__module__.rsplit(".", 1)[-1]
        out.append({"source": "torchvision", "name": name, "family": module})
    return out


def timm_families() -> dict[str, list[str]]:
    """Every ``timm.models`` module that registers models -> its model names."""
    families = {}
    for module in sorted(timm.list_modules()):
        names = sorted(timm.list_models(module=module))
        if names:
            families[module] = names
    return families


def timm_sample(n: int, seed: int) -> list[dict]:
    """One random model per family, filled up to ``n`` with a seeded random choice."""
    rng = random.Random(seed)
    families = timm_families()
    family_of = {name: fam for fam, names in families.items() for name in names}
    picked = [rng.choice(names) for _, names in sorted(families.items())]
    rest = sorted(set(family_of) - set(picked))
    extra = rng.sample(rest, max(0, min(len(rest), n - len(picked))))
    chosen = sorted(set(picked) | set(extra), key=lambda m: (family_of[m], m))
    return [{"source": "timm", "name": m, "family": family_of[m]} for m in chosen]


# ---------------------------------------------------------------------------------------------
# The per-model check (runs in a forked worker)
# ---------------------------------------------------------------------------------------------

def _short(err: BaseException, limit: int = 400) -> str:
    msg = f"{type(err).__name__}: {err}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _frames(err: BaseException) -> list[tuple[str, str, int]]:
    """(file, function, line) from the outermost to the innermost frame, following causes."""
    frames = []
    seen = set()
    e: BaseException | None = err
    chain = []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    # The raised error's frames first, then its causes' (the innermost origin last).
    for e in chain:
        for fs in traceback.extract_tb(e.__traceback__):
            frames.append((fs.filename, fs.name, fs.lineno))
    return frames


def _origin(err: BaseException) -> dict:
    frames = _frames(err)
    aux = [(f, fn, ln) for f, fn, ln in frames if f"{os.sep}auxsurgery{os.sep}" in f]
    inner = frames[-1] if frames else None
    lib = None
    if inner:
        for key in ("timm", "torchvision", "torch", "auxsurgery"):
            if f"{os.sep}{key}{os.sep}" in inner[0]:
                lib = key
                break
    return {
        "aux_frames": [f"{os.path.basename(f)}:{fn}:{ln}" for f, fn, ln in aux],
        "innermost": f"{inner[0].split('site-packages' + os.sep)[-1]}:{inner[1]}:{inner[2]}" if inner else None,
        "innermost_lib": lib,
    }


def _is_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "not enough memory" in text


def _attach_category(err: BaseException) -> str:
    if _is_memory(err):
        return "memory"
    text = str(err)
    if "'auto' placement needs an fx-traceable model" in text:
        return "trace"
    funcs = [fn for f, fn, _ in _frames(err) if f"{os.sep}auxsurgery{os.sep}" in f]
    if "probe_features" in funcs:
        return "attach-point discovery" if "list_attach_points" in funcs else "trunk-probe"
    for fn in reversed(funcs):
        if fn in AUX_CATEGORIES and fn != "__init__":
            return AUX_CATEGORIES[fn]
    if "list_attach_points" in funcs:
        return "attach-point discovery"
    if "the model's output is not" in text:
        return "output"
    return "attach"


def check_model(entry: dict, sizes: list[int], seed: int, report) -> dict:
    """Run every stage on one model; ``report(stage)`` tells the parent where we are."""
    import auxsurgery
    import torch.nn.functional as F

    rec: dict = {"status": "fail", "category": None, "error": None, "timings": {}}
    t_start = time.perf_counter()
    stage_t = [time.perf_counter()]

    def stage(name):
        now = time.perf_counter()
        if rec.get("stage"):
            rec["timings"][rec["stage"]] = round(now - stage_t[0], 3)
        stage_t[0] = now
        rec["stage"] = name
        report(name)

    def fail(category, err=None, message=None):
        rec["category"] = category
        rec["error"] = message if message is not None else _short(err)
        if err is not None:
            rec["origin"] = _origin(err)
        return rec

    torch.manual_seed(seed)
    # --- 1. build
    stage("build")
    try:
        backbone = auxsurgery.build_backbone(f"{entry['source']}:{entry['name']}", num_classes=10)
    except Exception as err:
        return fail("memory" if _is_memory(err) else "build", err)
    rec["params_m"] = round(sum(p.numel() for p in backbone.parameters()) / 1e6, 3)
    default = tuple(backbone.default_input_size)
    rec["default_input_size"] = list(default)

    # --- 2. input size: the bare backbone must accept it
    stage("input-size")
    gen = torch.Generator().manual_seed(seed)
    candidates = [(default[0], s, s) for s in sizes if s < min(default[1:])] + [default]
    size, size_errors = None, {}
    backbone.eval()
    for cand in candidates:
        x = torch.rand(2, *cand, generator=gen)
        try:
            with torch.no_grad():
                out = backbone(x)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
                raise ValueError(f"backbone output is {type(out).__name__} "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, not [2, 10]")
            size = cand
            break
        except Exception as err:
            if _is_memory(err):
                return fail("memory", err)
            size_errors["x".join(map(str, cand))] = _short(err, 200)
    rec["size_errors"] = size_errors
    backbone.train()  # as built: the surgery starts from a train-mode backbone, as a user's would
    if size is None:
        if "not [2, 10]" in size_errors.get("x".join(map(str, default)), ""):
            # It runs, but returns no [B, num_classes] logits (an encoder without a classifier).
            return fail("not-a-classifier", message="backbone output at its default size is not logits: "
                        + size_errors["x".join(map(str, default))])
        return fail("input-size", message="backbone runs at no tried size: "
                    + "; ".join(f"{k}: {v}" for k, v in size_errors.items()))

    # --- 3..5 at that size; when a small size fails in the surgery, retry at the default size.
    attempts = [size] if size == default else [size, default]
    for i, cand in enumerate(attempts):
        result = _surgery_checks(backbone, cand, seed, stage, F, auxsurgery)
        if result["category"] is None or i == len(attempts) - 1 or result["category"] == "memory":
            break
        rec["small_size_failure"] = {"input_size": list(cand), **result}
        rec["retried_at_default"] = True
        torch.manual_seed(seed)  # a fresh backbone: the failed attempt may have left hooks or stepped weights
        backbone = auxsurgery.build_backbone(f"{entry['source']}:{entry['name']}", num_classes=10)
    rec.update({k: v for k, v in result.items() if k not in ("category", "error", "origin")})
    rec["input_size"] = list(cand)
    stage("done")
    rec.pop("stage", None)
    rec["seconds_worker"] = round(time.perf_counter() - t_start, 3)
    if result["category"] is not None:
        rec["failed_stage"] = result.get("failed_stage")
        rec["origin"] = result.get("origin")
        return fail(result["category"], message=result["error"])
    rec["status"] = "ok"
    return rec


def _surgery_checks(backbone, size, seed, stage, F, auxsurgery) -> dict:
    res: dict = {"category": None, "error": None}

    def fail(category, stage_name, err=None, message=None):
        res.update(category=category, failed_stage=stage_name,
                   error=message if message is not None else _short(err))
        if err is not None:
            res["origin"] = _origin(err)
        return res

    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(2, *size, generator=gen)
    y = torch.randint(0, 10, (2,), generator=gen)

    # --- 3. attach
    stage("attach")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            aux = auxsurgery.attach_aux_blocks(backbone, at="auto:3", input_size=size)
        except Exception as err:
            fx_warn = [str(w.message) for w in caught if "torch.fx cannot trace" in str(w.message)]
            if fx_warn:
                res["fx_error"] = fx_warn[0][:400]
            return fail(_attach_category(err), "attach", err)
    fx_warn = [str(w.message) for w in caught if "torch.fx cannot trace" in str(w.message)]
    if fx_warn:
        res["fx_error"] = fx_warn[0][:400]
    res["method"] = aux.spec.get("method")
    res["attach_points"] = list(aux.attach_points)
    res["layouts"] = [f"{d['kind']}:{d['channels']}x{d['height']}x{d['width']}"
                      + (f"+{d['prefix_tokens']}" if d.get("prefix_tokens") else "")
                      for d in aux.spec.get("layouts", [])]
    res["head_params_m"] = round(sum(p.numel() for p in aux.heads.parameters()) / 1e6, 3)

    # --- 4. eval: equivalence and predict
    stage("forward-eval")
    aux.eval()
    try:
        with torch.no_grad():
            out = aux(x)
        if tuple(out.shape) != (1 + len(aux.attach_points), 2, 10):
            raise ValueError(f"aux(x) has shape {tuple(out.shape)}, expected "
                             f"({1 + len(aux.attach_points)}, 2, 10)")
        if not torch.isfinite(out).all():
            raise ValueError("aux(x) has non-finite logits")
    except Exception as err:
        return fail("memory" if _is_memory(err) else "forward-eval", "forward-eval", err)
    stage("equivalence")
    try:
        with torch.no_grad():
            ref = aux.public_model()(x)
    except Exception as err:
        return fail("memory" if _is_memory(err) else "equivalence", "equivalence", err)
    if not isinstance(ref, torch.Tensor):
        return fail("equivalence", "equivalence",
                    message=f"public_model()(x) after aux.eval() returns {type(ref).__name__}, not a tensor "
                            f"(public model training={aux.public_model().training})")
    res["equal"] = bool(torch.equal(out[0], ref))
    res["max_abs_diff"] = float((out[0] - ref).abs().max()) if out[0].shape == ref.shape else None
    if not res["equal"]:
        return fail("equivalence", "equivalence",
                    message=f"aux(x)[0] != public_model()(x) (max abs diff {res['max_abs_diff']:.3g})")
    stage("predict")
    try:
        pred = aux.predict(x, "vote")
        if tuple(pred.shape) != (2,) or pred.dtype != torch.long or pred.min() < 0 or pred.max() >= 10:
            raise ValueError(f"predict returned {pred.dtype} {tuple(pred.shape)}: {pred.tolist()}")
    except Exception as err:
        return fail("predict", "predict", err)

    # --- 5. train step
    stage("train-forward")
    aux.train()
    try:
        out = aux(x)
        losses = [F.cross_entropy(out[h], y) for h in range(out.shape[0])]
        loss = torch.stack(losses).sum()
        if not torch.isfinite(loss):
            raise ValueError(f"non-finite loss {loss.item()} (per head {[round(l.item(), 3) for l in losses]})")
    except Exception as err:
        return fail("memory" if _is_memory(err) else "train-forward", "train-forward", err)
    stage("backward")
    try:
        aux.zero_grad(set_to_none=True)
        loss.backward()
    except Exception as err:
        return fail("memory" if _is_memory(err) else "backward", "backward", err)
    stage("gradients")
    problems = []
    for h, head in enumerate(aux.heads, start=1):
        params = [p for p in head.parameters() if p.requires_grad]
        if any(p.grad is None for p in params):
            problems.append(f"head {h} ({aux.attach_points[h - 1]}): missing gradients")
        elif not all(torch.isfinite(p.grad).all() for p in params):
            problems.append(f"head {h} ({aux.attach_points[h - 1]}): non-finite gradients")
    trunk = [p for p in aux.trunk.parameters() if p.requires_grad]
    got = [p for p in trunk if p.grad is not None]
    if not got:
        problems.append("head 0 (backbone): no trunk parameter got a gradient")
    elif not all(torch.isfinite(p.grad).all() for p in got):
        problems.append("head 0 (backbone): non-finite trunk gradients")
    res["trunk_params_with_grad"] = f"{len(got)}/{len(trunk)}"
    # Do the aux heads' losses reach the trunk? (gradient of one aux head's loss only)
    if problems:
        return fail("gradients", "gradients", message="; ".join(problems))
    stage("sgd-step")
    try:
        # Plain SGD: on a first step momentum gives the same update, and its buffer would be
        # one more copy of the weights (the difference between fitting and not for 1B+ models).
        opt = torch.optim.SGD([p for p in aux.parameters() if p.requires_grad], lr=1e-3)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() for p in aux.parameters()):
            raise ValueError("non-finite parameters after the SGD step")
    except Exception as err:
        return fail("sgd-step", "sgd-step", err)
    stage("equivalence-after-step")
    aux.eval()
    try:
        with torch.no_grad():
            out2 = aux(x)
            ref2 = aux.public_model()(x)
    except Exception as err:
        return fail("memory" if _is_memory(err) else "forward-eval", "equivalence-after-step", err)
    if not isinstance(ref2, torch.Tensor):
        return fail("equivalence", "equivalence-after-step",
                    message=f"public_model()(x) returns {type(ref2).__name__}, not a tensor")
    res["equal_after_step"] = bool(torch.equal(out2[0], ref2))
    if not res["equal_after_step"] and out2[0].shape == ref2.shape and not torch.isfinite(ref2).all():
        same = bool(torch.allclose(out2[0], ref2, rtol=0, atol=0, equal_nan=True))
        return fail("numerics", "equivalence-after-step",
                    message=f"after one SGD step the backbone itself outputs non-finite logits "
                            f"(aux head 0 {'matches it, NaNs included' if same else 'differs'})")
    if not res["equal_after_step"]:
        diff = float((out2[0] - ref2).abs().max())
        return fail("equivalence", "equivalence-after-step",
                    message=f"after one SGD step aux(x)[0] != public_model()(x) (max abs diff {diff:.3g})")
    return res


def _worker(entry, sizes, seed, threads, conn):
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    warnings.filterwarnings("ignore")

    def report(stage):
        conn.send(("stage", stage))

    try:
        rec = check_model(entry, sizes, seed, report)
    except BaseException as err:  # noqa: BLE001 - anything the stages did not catch
        rec = {"status": "fail", "category": "memory" if _is_memory(err) else "harness",
               "error": _short(err), "origin": _origin(err)}
    try:
        conn.send(("result", rec))
    except Exception as err:  # unpicklable content
        conn.send(("result", {"status": "fail", "category": "harness", "error": _short(err)}))
    conn.close()


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def watch_worker(proc, parent, child, timeout: float, max_mem_gb: float) -> tuple[str, dict | None, float, str | None, float]:
    """Start the forked worker ``proc`` and wait for its result on ``parent`` under a wall-clock and memory limit.

    The worker sends ``("stage", name)`` as it goes and ``("result", record)`` at the end. Returns ``(last stage,
    record or None, peak RSS in GiB, "timeout" / "memory" / None, seconds)``; a worker over a limit is killed.
    """
    start = time.perf_counter()
    proc.start()
    child.close()
    stage, rec, peak, killed = "start", None, 0.0, None
    while True:
        if time.perf_counter() - start > timeout:
            killed = "timeout"
            break
        if parent.poll(0.2):
            try:
                kind, payload = parent.recv()
            except EOFError:
                break
            if kind == "stage":
                stage = payload
            else:
                rec = payload
                break
        peak = max(peak, _rss_gb(proc.pid))
        if peak > max_mem_gb:
            killed = "memory"
            break
        if not proc.is_alive() and not parent.poll(0):
            break
    if killed:
        proc.kill()
    proc.join(10)
    return stage, rec, peak, killed, time.perf_counter() - start


def run_one(entry: dict, args) -> dict:
    """Run ``check_model`` in a forked worker under a wall-clock and memory limit."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(entry, args.sizes, args.seed, args.threads, child), daemon=True)
    stage, rec, peak, killed, seconds = watch_worker(proc, parent, child, args.timeout, args.max_mem_gb)
    if rec is None:
        if killed == "timeout":
            rec = {"status": "fail", "category": "timeout",
                   "error": f"no result within {args.timeout:g} s (was in stage '{stage}')"}
        elif killed == "memory":
            rec = {"status": "fail", "category": "memory",
                   "error": f"worker RSS exceeded {args.max_mem_gb:g} GiB (stage '{stage}')"}
        else:
            code = proc.exitcode
            cat = "memory" if code == -9 else "crash"
            rec = {"status": "fail", "category": cat,
                   "error": f"worker died with exit code {code} in stage '{stage}'"}
        rec["failed_stage"] = stage
    rec = {**entry, **rec, "seconds": round(seconds, 2), "peak_rss_gb": round(peak, 2),
           "limits": {"timeout": args.timeout, "max_mem_gb": args.max_mem_gb, "threads": args.threads},
           "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "auxsurgery_commit": source_commit()}
    return rec


# ---------------------------------------------------------------------------------------------
# Summary and reports
# ---------------------------------------------------------------------------------------------

def summarize(records: list[dict]) -> dict:
    summary: dict = {"total": len(records), "by_source": {}}
    for source in sorted({r["source"] for r in records}):
        rs = [r for r in records if r["source"] == source]
        ok = [r for r in rs if r["status"] == "ok"]
        methods: dict[str, int] = {}
        for r in rs:
            if r.get("method"):
                methods[r["method"]] = methods.get(r["method"], 0) + 1
        cats: dict[str, int] = {}
        for r in rs:
            if r["status"] != "ok":
                cats[r["category"]] = cats.get(r["category"], 0) + 1
        fams = sorted({r["family"] for r in rs})
        fam_ok = sorted({r["family"] for r in ok})
        summary["by_source"][source] = {
            "models": len(rs),
            "ok": len(ok),
            "success_rate": round(len(ok) / len(rs), 4) if rs else None,
            "methods_attached": methods,
            "methods_ok": {m: sum(1 for r in ok if r.get("method") == m) for m in methods},
            "failures_by_category": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "families": len(fams),
            "families_with_an_ok_model": len(fam_ok),
            "input_sizes": _count("x".join(map(str, r["input_size"])) for r in rs if r.get("input_size")),
            "retried_at_default_size": sum(1 for r in rs if r.get("retried_at_default")),
            "seconds": round(sum(r.get("seconds", 0) for r in rs), 1),
        }
    summary["ok"] = sum(1 for r in records if r["status"] == "ok")
    summary["success_rate"] = round(summary["ok"] / len(records), 4) if records else None
    return summary


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _md_escape(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def write_markdown(path: str, data: dict) -> None:
    meta, summary, records = data["meta"], data["summary"], data["records"]
    lines = ["# auxsurgery coverage benchmark", ""]
    lines += [f"- Command: `{meta['command']}`",
              f"- Date: {meta['started']} (last update {meta['updated']})",
              "- Machines (every invocation's): " + "; ".join(meta.get("machines") or [meta["machine"]]),
              f"- Versions: {meta['versions']}",
              f"- Settings: seed {meta['seed']}, small sizes {meta['sizes']} then default size, "
              f"limits of the last invocation: timeout {meta['timeout']} s/model, memory cap "
              f"{meta['max_mem_gb']} GiB, torch threads {meta['threads']} (records written since "
              "the limits were stored carry their own under `limits` in the JSON), "
              "random weights, num_classes=10, batch 2",
              f"- Models planned: {meta['planned']}; done: {len(records)}"
              + (" (INCOMPLETE: rerun the command with --resume)" if len(records) < meta["planned"] else ""),
              f"- Wall time of model checks (sum): {sum(r.get('seconds', 0) for r in records) / 60:.1f} min",
              "",
              "Success = build, attach (`auto:3`), eval equivalence (`torch.equal(aux(x)[0], "
              "public_model()(x)`), `predict(x, 'vote')`, a train step (CE summed over heads, backward, "
              "finite gradients for every head), one SGD step and equivalence again all pass.",
              "",
              "## Success rates", "",
              "| library | models | ok | success rate | families (with an ok model) | fx (ok) | hooks (ok) | "
              "input sizes | retried at default |",
              "|---|---|---|---|---|---|---|---|---|"]
    for source, s in summary["by_source"].items():
        m, mo = s["methods_attached"], s["methods_ok"]
        sizes = ", ".join(f"{k}: {v}" for k, v in s["input_sizes"].items())
        lines.append(f"| {source} | {s['models']} | {s['ok']} | {100 * s['success_rate']:.1f}% | "
                     f"{s['families']} ({s['families_with_an_ok_model']}) | {m.get('fx', 0)} ({mo.get('fx', 0)}) | "
                     f"{m.get('hooks', 0)} ({mo.get('hooks', 0)}) | {sizes} | {s['retried_at_default_size']} |")
    if summary["total"]:
        lines.append(f"| **all** | {summary['total']} | {summary['ok']} | {100 * summary['success_rate']:.1f}% "
                     "| | | | | |")
    lines += ["", "fx / hooks count models whose attach succeeded with that method (in brackets: those "
              "that passed every check). fx-untraceable models attach through the forward-hook "
              "fallback, which discovers `auto:3` points from module outputs.", ""]
    lines += ["## Failures by category", "", "| library | category | count |", "|---|---|---|"]
    for source, s in summary["by_source"].items():
        for cat, n in s["failures_by_category"].items():
            lines.append(f"| {source} | {cat} | {n} |")
    fails = [r for r in records if r["status"] != "ok"]
    lines += ["", f"## Every failing model ({len(fails)})", "",
              "| library | model | family | category | stage | input size | method | cause | origin |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(fails, key=lambda r: (r["source"], r["category"] or "", r["name"])):
        origin = r.get("origin") or {}
        where = origin.get("aux_frames", [])[-1:] or ([origin["innermost"]] if origin.get("innermost") else [])
        size = "x".join(map(str, r["input_size"])) if r.get("input_size") else ""
        cause = r.get("error") or ""
        if r.get("fx_error") and r.get("category") == "trace":
            cause += f" [fx: {r['fx_error'][:250]}]"
        lines.append(f"| {r['source']} | {r['name']} | {r['family']} | {r['category']} | "
                     f"{r.get('failed_stage', '')} | {size} | {r.get('method') or ''} | "
                     f"{_md_escape(cause[:500])} | {_md_escape(', '.join(where))} |")
    small = [r for r in records if r.get("small_size_failure")]
    if small:
        lines += ["", f"## Failed at the small size, retried at the default size ({len(small)})", "",
                  "| library | model | small size | small-size category | small-size cause | final status |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(small, key=lambda r: (r["source"], r["name"])):
            f = r["small_size_failure"]
            lines.append(f"| {r['source']} | {r['name']} | {'x'.join(map(str, f['input_size']))} | "
                         f"{f['category']} | {_md_escape((f.get('error') or '')[:300])} | {r['status']} |")
    lines += ["", "## All models", "",
              "| library | model | family | status | input size | method | attach points | layouts | s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        size = "x".join(map(str, r["input_size"])) if r.get("input_size") else ""
        lines.append(f"| {r['source']} | {r['name']} | {r['family']} | {r['status']}"
                     f"{'' if r['status'] == 'ok' else ' (' + str(r['category']) + ')'} | {size} | "
                     f"{r.get('method') or ''} | {_md_escape(', '.join(r.get('attach_points') or []))} | "
                     f"{_md_escape(', '.join(r.get('layouts') or []))} | {r.get('seconds', '')} |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def output_paths(ap: argparse.ArgumentParser, args: argparse.Namespace, committed: dict[str, str]) -> None:
    """Point --json/--markdown at the committed results (``committed``: option -> path) only under
    --write-results: a smoke run that names no path must not overwrite them (commit 81a5700 replaced the
    480-model coverage.md by a one-model report that way). --markdown defaults to --json's path as .md."""
    if args.write_results:
        for option, path in committed.items():
            if getattr(args, option) is None:
                setattr(args, option, path)
    if args.json is None:
        ap.error("name --json (and --markdown) for this run's results, or pass --write-results to update "
                 f"the committed {committed['json']}")
    if args.markdown is None:
        args.markdown = os.path.splitext(args.json)[0] + ".md"


def add_output_options(ap: argparse.ArgumentParser) -> None:
    """--json, --markdown and --write-results (see :func:`output_paths`)."""
    ap.add_argument("--json", default=None, help="this run's records and summary (JSON)")
    ap.add_argument("--markdown", default=None, help="this run's report (default: --json's path as .md)")
    ap.add_argument("--write-results", action="store_true",
                    help="write the committed results under benchmarks/results (unless --json/--markdown say "
                         "otherwise)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("torchvision", "timm", "all"), default="all")
    ap.add_argument("--timm-sample", type=int, default=400,
                    help="timm models: one per family plus a seeded random fill up to N (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="run only the first N planned models")
    ap.add_argument("--models", default=None, help="comma-separated names (source:name or name) to run only")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    ap.add_argument("--max-mem-gb", type=float, default=8.0, help="kill a worker above this RSS (default 8)")
    ap.add_argument("--sizes", default="64,96",
                    help="small square sides to try before the default input size (default 64,96)")
    add_output_options(ap)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--resume", action="store_true", help="skip models already in --json")
    ap.add_argument("--rerun", default="",
                    help="with --resume: comma-separated failure categories to run again (e.g. memory,timeout); "
                         "'untracked' also reruns records that do not say which auxsurgery commit they tested, "
                         "'all' every record of the planned models (after a change that affects them)")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite --markdown (and the summary) from an existing --json; runs no model")
    args = ap.parse_args(argv)
    output_paths(ap, args, {"json": "benchmarks/results/coverage/coverage.json",
                            "markdown": "benchmarks/results/coverage/coverage.md"})
    if args.report_only:
        with open(args.json) as f:
            data = json.load(f)
        data["summary"] = summarize(data["records"])
        write_json(args.json, data)
        if args.markdown:
            write_markdown(args.markdown, data)
        print(json.dumps(data["summary"], indent=1))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    torch.set_num_threads(args.threads)

    plan: list[dict] = []
    if args.source in ("torchvision", "all"):
        plan += torchvision_models()
    if args.source in ("timm", "all"):
        plan += timm_sample(args.timm_sample, args.seed)
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        plan = [e for e in plan if e["name"] in wanted or f"{e['source']}:{e['name']}" in wanted]
        known = {e["name"] for e in plan} | {f"{e['source']}:{e['name']}" for e in plan}
        for m in sorted(wanted - known):  # named models outside the sample
            src, _, name = m.rpartition(":")
            src = src or ("torchvision" if name in torchvision.models.list_models(module=torchvision.models)
                          else "timm")
            fam = (next((e["family"] for e in torchvision_models() if e["name"] == name), "?")
                   if src == "torchvision" else
                   next((f for f, ns in timm_families().items() if name in ns), "?"))
            plan.append({"source": src, "name": name, "family": fam})
    if args.limit is not None:
        plan = plan[: args.limit]

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    records: list[dict] = []
    meta = {"command": command, "started": now, "updated": now, "machine": machine(),
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}",
            "seed": args.seed, "sizes": args.sizes, "timeout": args.timeout, "max_mem_gb": args.max_mem_gb,
            "threads": args.threads, "source": args.source, "timm_sample": args.timm_sample,
            "planned": len(plan), "wall_seconds": 0.0}
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            old = json.load(f)
        # Keep every earlier record (a --limit or --models run must not drop the others); --rerun
        # drops failures of the given categories among the planned models only.
        rerun = {c.strip() for c in args.rerun.split(",") if c.strip()}
        planned = {(e["source"], e["name"]) for e in plan}
        def stale(r):
            return ("all" in rerun or (r["status"] != "ok" and r.get("category") in rerun)
                    or ("untracked" in rerun and not r.get("auxsurgery_commit")))

        records = [r for r in old.get("records", []) if not (stale(r) and (r["source"], r["name"]) in planned)]
        meta["planned"] = max(len(plan), old.get("meta", {}).get("planned", 0))
        meta["started"] = old.get("meta", {}).get("started", now)
        meta["wall_seconds"] = old.get("meta", {}).get("wall_seconds", 0.0)
        meta["resumed"] = old.get("meta", {}).get("resumed", 0) + 1
        cmds = old.get("meta", {}).get("commands", [old.get("meta", {}).get("command")])
        meta["commands"] = [c for c in cmds if c] + [command]
        # A long run is resumed on whatever machine a session gets: keep every one it ran on.
        machines = old.get("meta", {}).get("machines") or [old.get("meta", {}).get("machine")]
        meta["machines"] = [m for m in machines if m] + [m for m in [meta["machine"]] if m not in machines]
    done = {(r["source"], r["name"]) for r in records}
    todo = [e for e in plan if (e["source"], e["name"]) not in done]
    print(f"{len(plan)} models planned, {len(done)} already done, {len(todo)} to run", flush=True)

    def save():
        meta["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        order = {(e["source"], e["name"]): i for i, e in enumerate(plan)}
        records.sort(key=lambda r: order.get((r["source"], r["name"]), 1 << 30))
        data = {"meta": meta, "summary": summarize(records), "records": records}
        write_json(args.json, data)
        return data

    wall0 = time.perf_counter()
    base_wall = meta["wall_seconds"]
    for i, entry in enumerate(todo, 1):
        rec = run_one(entry, args)
        records.append(rec)
        meta["wall_seconds"] = round(base_wall + time.perf_counter() - wall0, 1)
        data = save()
        extra = "" if rec["status"] == "ok" else f" [{rec['category']}] {rec.get('error', '')[:160]}"
        size = "x".join(map(str, rec["input_size"])) if rec.get("input_size") else "-"
        print(f"[{i}/{len(todo)}] {entry['source']}:{entry['name']} {rec['status']} {size} "
              f"{rec.get('method') or '-'} {rec['seconds']:.1f}s{extra}", flush=True)
        if i % 25 == 0 and args.markdown:
            write_markdown(args.markdown, data)
    data = save()
    if args.markdown:
        write_markdown(args.markdown, data)
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
