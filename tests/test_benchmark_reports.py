"""Every committed Markdown report under benchmarks/results agrees with the JSON it was made from: its numbers
are those its renderer derives from that JSON (a smoke run once replaced the 480-model coverage.md by a
one-model report while coverage.json kept all 480 records)."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from auxsurgery.evaluation.report import rule_label
from auxsurgery.studies.comparison import report_markdown

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _benchmark(name: str):
    # A benchmark imports its siblings (any_defence: judge_agreement's noise) as its script does, from its folder.
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.append(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by their first cell (prefixed by the section heading): the numbers in each row, in order."""
    rows, section = {}, ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            section = line
        elif line.startswith("|") and not set(line) <= set("|-: "):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[f"{section} / {cells[0]}"] = [n for cell in cells[1:] for n in NUMBER.findall(cell)]
    return rows


def _in_order(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(number in rest for number in part)


def _coverage_markdown(name: str):
    def render(doc, tmp_path):
        path = tmp_path / f"{name}.md"
        _benchmark(name).write_markdown(path if name == "export_coverage" else str(path), doc)
        return path.read_text()
    return render


def _recipe_markdown(doc, folder):
    return report_markdown(doc, sorted(p.name for p in folder.glob("*.png")))


# (markdown, json, how the json becomes markdown)
RENDERED = [
    *((md, md.with_suffix(".json"), _coverage_markdown(md.stem))
      for md in (RESULTS / "coverage" / "coverage.md", RESULTS / "export_coverage" / "export_coverage.md")),
    # The benchmark's own records (v0.1/ keeps the 0.1 benchmark's, in a schema today's renderer no longer writes).
    *((md, md.with_suffix(".json"), lambda doc, _: _benchmark("suite_vs_autoattack").report(doc))
      for md in [RESULTS / "suite_vs_autoattack" / "suite_vs_autoattack.md"] if md.exists()),
    (RESULTS / "any_defence" / "any_defence.md", RESULTS / "any_defence" / "any_defence.json",
     lambda doc, _: _benchmark("any_defence").report(doc)),
    *((md, md.with_suffix(".json"), lambda doc, _: _benchmark("suite_vs_autoattack").run_report(doc))
      for md in sorted(RESULTS.glob("*/autoattack_check.md"))),
    *((md, md.with_suffix(".json"), lambda doc, _, folder=md.parent: _recipe_markdown(doc, folder))
      for md in sorted(RESULTS.glob("*/report.md")) if md.with_suffix(".json").exists()),
]


@pytest.mark.parametrize("markdown, document, render", RENDERED,
                         ids=[str(md.relative_to(RESULTS)) for md, _, _ in RENDERED])
def test_a_committed_report_holds_the_numbers_of_its_json(markdown, document, render, tmp_path):
    """Each table row of the committed report carries, in order, the numbers that the renderer of today makes
    from the JSON (reports written by an earlier version may lack columns added since, never disagree)."""
    committed, rendered = _rows(markdown.read_text()), _rows(render(json.loads(document.read_text()), tmp_path))
    shared = committed.keys() & rendered.keys()
    assert len(shared) >= 0.9 * len(committed), sorted(committed.keys() - rendered.keys())[:5]
    wrong = [key for key in shared if not _in_order(committed[key], rendered[key])]
    assert not wrong, [(key, committed[key], rendered[key]) for key in wrong[:3]]


EVALUATIONS = sorted(RESULTS.rglob("results.json"))


@pytest.mark.parametrize("document", EVALUATIONS, ids=[str(p.relative_to(RESULTS)) for p in EVALUATIONS])
def test_an_evaluation_report_states_the_worst_case_of_its_results(document):
    """report.md beside results.json (written by `auxsurgery attack` / a recipe): the sample count and the
    clean and worst-case accuracy of every rule are results.json's."""
    doc, text = json.loads(document.read_text()), (document.parent / "report.md").read_text()
    assert f"n={doc['data']['n']}" in text
    worst = text[text.index("## Worst case per sample"):]
    for rule in doc["worst_case"]["rules"]:
        clean, robust = (100 * doc[key]["rules"][rule] for key in ("clean", "worst_case"))
        assert f"| {rule_label(rule)} | {clean:.1f} | {robust:.1f} |" in worst, rule


def test_run_check_grows_by_chunks():
    """An AutoAttack check of a recipe run grown chunk by chunk equals one check of all its points: per-point
    verdicts concatenate, counts and costs add up, and misses are found in every chunk."""
    from auxsurgery.attacks import Passes
    from auxsurgery.evaluation.autoattack import AutoAttackResult

    bench = _benchmark("suite_vs_autoattack")

    def chunk(robust, seconds, forward):
        robust = torch.tensor(robust)
        stages = [{"name": "APGD-CE", "view": "logits", "attacked": len(robust), "robust_after": int(robust.sum()),
                   "seconds": seconds, "passes": {"forward": forward, "backward": forward}}]
        return AutoAttackResult("vote", "standard", robust, torch.zeros(len(robust)), seconds, stages,
                                Passes(forward, forward), {"steps": 100, "square_queries": 5000, "unattacked": 1})

    suite = torch.tensor([True, True, False, True, False])
    record = bench._grown(None, chunk([True, False, False], 2.0, 10), suite[:3], "m", "8-255", "vote", 0.03)
    record = bench._grown(record, chunk([True, True], 3.0, 5), suite, "m", "8-255", "vote", 0.03)
    assert record["n"] == 5 and record["autoattack"]["robust"] == [True, False, False, True, True]
    assert record["suite_robust_autoattack_fooled"] == [1]
    assert record["autoattack_robust_suite_fooled"] == 1
    assert record["suite"] == pytest.approx(0.6) and record["union"] == pytest.approx(0.4)
    assert record["autoattack"]["accuracy"] == pytest.approx(0.6)
    assert record["autoattack"]["seconds"] == 5.0 and record["autoattack"]["passes"] == {"forward": 15, "backward": 15}
    assert record["autoattack"]["settings"]["unattacked"] == 2
    (stage,) = record["autoattack"]["stages"]
    assert (stage["attacked"], stage["robust_after"], stage["passes"]["forward"]) == (5, 3, 15)
    # A head's view, run in some chunks only, adds its points and costs but no count of points left robust.
    head = chunk([True], 1.0, 2)
    head.stages = [{**head.stages[0], "view": "head public"}]
    grown = bench._grown(bench._grown(record, head, torch.tensor([True] * 6), "m", "8-255", "vote", 0.03), head,
                         torch.tensor([True] * 7), "m", "8-255", "vote", 0.03)
    view = next(s for s in grown["autoattack"]["stages"] if s["view"] == "head public")
    assert (view["attacked"], view["robust_after"], view["passes"]["forward"]) == (2, None, 4)
    # The cost table compares the recipe's whole evaluation with AutoAttack once every rule is checked on all points.
    record["suite_all_points"] = {"n": 5, "seconds": 60.0, "passes": {"forward": 2, "backward": 1},
                                  "sanity_passes": {"forward": 1, "backward": 1}, "rules": ["vote"]}
    doc = {"records": {"m@8-255@vote": record}, "commands": ["c"], "machine": "here"}
    assert bench._run_costs(doc) == [["m", "8-255", "5", "0.0k", "0.0k", "0.100", "1.0", "0.1"]]
    record["suite_all_points"]["rules"] = ["vote", "score"]
    assert bench._run_costs(doc) == [] and "Cost in image-passes" not in bench.run_report(doc)


def test_a_newer_suite_is_compared_with_the_autoattack_verdicts_a_record_kept(monkeypatch):
    """AutoAttack's side of a record does not depend on the suite: measuring again with a previous record that kept
    its per-point verdicts runs the suite only, and the misses are against those verdicts."""
    from attack_helpers import dataset, trained_plain_model

    bench = _benchmark("suite_vs_autoattack")
    model, (x, y) = trained_plain_model(), dataset(6, seed=4)
    previous = {"autoattack_robust_points": [True] * 6, "autoattack_robust": 1.0, "autoattack_seconds": 9.0,
                "autoattack_passes": {"forward": 1000, "backward": 1000}, "autoattack_stages": [],
                "autoattack_settings": {}, "autoattack_command": "the first run"}

    def no_autoattack(*args, **kwargs):
        raise AssertionError("AutoAttack ran again")

    monkeypatch.setattr(bench, "autoattack", no_autoattack)
    record = bench.measure(model, x, y, 0.05, "vote", bf16=False, previous=previous)
    suite = record["suite_robust"]
    assert record["autoattack_command"] == "the first run" and record["autoattack_robust"] == 1.0
    assert record["union_robust"] == suite and record["misses"] == 0
    assert record["autoattack_robust_suite_fooled"] == round(6 * (1 - suite))
    assert record["pass_ratio"] == pytest.approx(sum(record["suite_passes"].values()) / 2000)
    with pytest.raises(AssertionError, match="ran again"):  # no verdicts kept for these points: it must run
        bench.measure(model, x[:3], y[:3], 0.05, "vote", bf16=False, previous=previous)


def test_a_recipe_stage_reuses_the_verdicts_of_its_runs_autoattack_check(tmp_path):
    bench = _benchmark("suite_vs_autoattack")
    robust = [True, False, True]
    check = {"records": {"adv@8-255@vote": {
        "model": "adv", "reading": "8-255", "rule": "vote", "eps": 0.03137, "n": 3, "command": "check it",
        "autoattack": {"robust": robust, "accuracy": 2 / 3, "seconds": 5.0, "passes": {"forward": 9, "backward": 9},
                       "stages": [], "settings": {}}}}}
    (tmp_path / "autoattack_check.json").write_text(json.dumps(check))
    verdicts = bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "vote", 3)
    assert verdicts["autoattack_robust_points"] == robust and verdicts["autoattack_passes"]["forward"] == 9
    assert verdicts["autoattack_command"].startswith("check it (the run's AutoAttack check")
    # Only the same stage, rule, eps and points.
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "vote", 2) is None
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.00784, "vote", 3) is None
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "score", 3) is None
    assert bench._run_check_verdicts(f"{tmp_path}:other", 0.03137, "vote", 3) is None
    assert bench._run_check_verdicts("mnist-lenet5", 0.1, "vote", 3) is None
    # ...and the same norm: an L-inf check says nothing of the L2 ball.
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "vote", 3, "l2") is None
    check["records"]["adv@8-255@vote"]["norm"] = "l2"
    (tmp_path / "autoattack_check.json").write_text(json.dumps(check))
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "vote", 3, "l2")["autoattack_robust_points"] == robust
    assert bench._run_check_verdicts(f"{tmp_path}:adv", 0.03137, "vote", 3) is None


def test_an_l2_record_runs_both_sides_in_l2_and_its_report_says_so(monkeypatch):
    from attack_helpers import dataset, trained_plain_model
    from auxsurgery.evaluation.autoattack import autoattack

    bench = _benchmark("suite_vs_autoattack")
    model, (x, y) = trained_plain_model(), dataset(6, seed=4)
    seen = {}

    def reference(model, x, y, eps, rule, protocol, norm):
        seen.update(eps=eps, norm=norm)
        return autoattack(model, x, y, eps, rule=rule, protocol={"steps": 2, "square_queries": 5}, norm=norm)

    monkeypatch.setattr(bench, "autoattack", reference)
    record = bench.measure(model, x, y, 0.5, "vote", bf16=False, norm="l2")
    assert seen == {"eps": 0.5, "norm": "l2"} and record["norm"] == "l2"
    assert record["autoattack_settings"]["norm"] == "l2" and record["misses"] >= 0
    assert "| m | L2 0.5 | vote |" in bench.report({"records": {"m@l2=0.5@vote": record}, "command": "c",
                                                     "machine": "here"})


def test_autoattack_side_is_kept_chunk_by_chunk_and_an_interrupted_record_continues(monkeypatch, tmp_path):
    """With a partial file, AutoAttack runs on chunks of points, each kept as it lands; run again after an
    interruption it starts after the last kept chunk, and the joined side equals one run over all the points."""
    from auxsurgery.attacks import Passes
    from auxsurgery.evaluation.autoattack import AutoAttackResult

    bench = _benchmark("suite_vs_autoattack")
    x, y = torch.zeros(5, 1, 2, 2), torch.tensor([0, 1, 2, 3, 4])
    calls = []

    def fake_autoattack(model, x, y, eps, rule, protocol, norm):
        calls.append(y.tolist())
        if len(calls) == 3 and fail:
            raise KeyboardInterrupt  # the session ends during the third chunk
        robust = y % 2 == 0
        stages = [{"name": "APGD-CE", "view": "surrogate", "attacked": len(y), "robust_after": int(robust.sum()),
                   "seconds": 1.0, "passes": {"forward": len(y), "backward": len(y)}}]
        return AutoAttackResult(rule, "standard", robust, x, 1.0, stages, Passes(len(y), len(y)),
                                {"steps": 100, "norm": norm, "unattacked": 0})

    monkeypatch.setattr(bench, "autoattack", fake_autoattack)
    monkeypatch.setattr(bench, "AUTOATTACK_CHUNK", 2)
    partial = tmp_path / "partial" / "m@l2=0.5@vote.json"
    fail = True
    with pytest.raises(KeyboardInterrupt):
        bench._autoattack_side(None, x, y, 0.5, "vote", None, "l2", partial)
    assert json.loads(partial.read_text())["autoattack_robust_points"] == [True, False, True, False]
    fail, calls = False, []
    side = bench._autoattack_side(None, x, y, 0.5, "vote", None, "l2", partial)
    assert calls == [[4]]  # only the points after the kept chunks
    assert side["autoattack_robust_points"] == [True, False, True, False, True]
    assert side["autoattack_robust"] == pytest.approx(0.6) and side["autoattack_seconds"] == 3.0
    assert side["autoattack_passes"] == {"forward": 5, "backward": 5}
    (stage,) = side["autoattack_stages"]
    assert (stage["attacked"], stage["robust_after"]) == (5, 3)
    calls = []
    whole = bench._autoattack_side(None, x, y, 0.5, "vote", None, "l2", None)
    for key in ("autoattack_robust_points", "autoattack_passes", "autoattack_settings"):
        assert whole[key] == side[key]
    assert whole["autoattack_robust"] == pytest.approx(side["autoattack_robust"])
    untimed = [[{**stage, "seconds": 0} for stage in s["autoattack_stages"]] for s in (whole, side)]
    assert untimed[0] == untimed[1]
    assert calls == [[0, 1, 2, 3, 4]]  # without a partial file: one run over every point


def test_a_noisy_record_judges_the_suites_examples_twice_as_it_does_the_external_ones():
    """any_defence's suite-side agreement: a second run of the judge over the clean point and every example in the
    suite's worst case, against the suite's verdict; a deterministic model repeats itself, single draws of a noisy
    one do not."""
    from attack_helpers import dataset, trained_plain_model
    from torch import nn

    from auxsurgery.evaluation import Budget, run_suite

    bench = _benchmark("any_defence")
    model, (x, y) = trained_plain_model(), dataset(24, seed=4)
    run = dict(suite="strong", eps=0.05, budget=Budget.quick(), progress=False, keep_adversarial=True)
    steady = run_suite(model, (x, y), **run)
    assert bench.suite_agreement(steady, model, x, y, "vote", 1) == [True] * len(x)
    torch.manual_seed(0)
    noisy = nn.Sequential(bench.GaussianNoise(0.3), model).eval()
    shaky = run_suite(noisy, (x, y), eot=1, judge_draws=1, **run)
    agreement = bench.suite_agreement(shaky, noisy, x, y, "vote", 1)
    assert len(agreement) == len(x) and 0 < sum(agreement) < len(x)
