"""benchmarks/coverage.py: a resumed run keeps what it must and reruns only what it is asked to."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


@pytest.fixture(scope="module")
def coverage_bench():
    # Loaded from its path under its own name: "coverage" is also the name of a well-known package.
    spec = importlib.util.spec_from_file_location("auxsurgery_coverage_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(name, status="fail", category="timeout", commit="abc1234"):
    return {"source": "torchvision", "name": name, "family": "x", "status": status, "category": category,
            "error": "earlier failure", "seconds": 1.0, "auxsurgery_commit": commit}


def _run(coverage_bench, tmp_path, records, *args):
    out = tmp_path / "coverage.json"
    meta = {"machine": "an earlier machine", "planned": 2, "command": "earlier command"}
    out.write_text(json.dumps({"meta": meta, "records": records}))
    coverage_bench.main(["--source", "torchvision", "--models", "torchvision:resnet18", "--resume",
                         "--json", str(out), "--markdown", str(tmp_path / "coverage.md"), *args])
    return json.loads(out.read_text())


def test_rerun_drops_failures_of_the_named_models_only(coverage_bench, tmp_path):
    data = _run(coverage_bench, tmp_path, [_record("resnet18"), _record("alexnet")], "--rerun", "timeout")
    by_name = {r["name"]: r for r in data["records"]}
    assert by_name["alexnet"]["error"] == "earlier failure"  # not planned: kept as it was
    fresh = by_name["resnet18"]
    assert fresh["status"] == "ok", fresh.get("error")
    assert fresh["limits"] == {"timeout": 120.0, "max_mem_gb": 8.0, "threads": 1}
    assert data["meta"]["machines"][0] == "an earlier machine" and len(data["meta"]["machines"]) == 2
    assert data["meta"]["commands"][0] == "earlier command"


def test_rerun_untracked_reruns_records_without_a_commit(coverage_bench, tmp_path):
    untracked = _record("resnet18", status="ok", category=None, commit=None)
    data = _run(coverage_bench, tmp_path, [untracked, _record("alexnet", commit=None)], "--rerun", "untracked")
    by_name = {r["name"]: r for r in data["records"]}
    assert by_name["resnet18"].get("limits") is not None  # run again
    assert "limits" not in by_name["alexnet"]  # untracked too, but not among the planned models


def test_plain_resume_keeps_every_record(coverage_bench, tmp_path):
    data = _run(coverage_bench, tmp_path, [_record("resnet18"), _record("alexnet")])
    assert [r["error"] for r in data["records"]] == ["earlier failure", "earlier failure"]


def test_rerun_all_reruns_passing_records_of_the_named_models(coverage_bench, tmp_path):
    passing = _record("resnet18", status="ok", category=None)
    data = _run(coverage_bench, tmp_path, [passing, _record("alexnet", status="ok", category=None)],
                "--rerun", "all")
    by_name = {r["name"]: r for r in data["records"]}
    assert by_name["resnet18"].get("limits") is not None and by_name["resnet18"]["status"] == "ok"
    assert "limits" not in by_name["alexnet"]
