"""Evaluation: suites judged by the real decision rule, worst case, sanity checks, presets and reports."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxsurgery import attach_aux_blocks
from auxsurgery.evaluation import (
    SCHEMA, AttackPlan, Budget, collect, get_preset, parse_suites, results_document, run_suite, validate_results,
    worst_case, write_report,
)

CLASSES, SHAPE, EPS = 4, (1, 8, 8), 0.1
QUICK = Budget.quick()


pytestmark = pytest.mark.usefixtures("single_thread")


def prototypes() -> torch.Tensor:
    """One fixed image per class: the task is telling them apart under noise."""
    return 0.25 + 0.5 * torch.rand((CLASSES, *SHAPE), generator=torch.Generator().manual_seed(1234))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return (prototypes()[y] + 0.15 * torch.randn((n, *SHAPE), generator=g)).clamp(0, 1), y


class Net(nn.Module):
    """A small CNN; ``relu1`` and ``relu2`` are where the aux heads attach."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()
        self.flatten, self.fc = nn.Flatten(), nn.Linear(8 * 16, CLASSES)

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


def train(model: nn.Module, heads: int) -> nn.Module:
    torch.manual_seed(0)
    x, y = make_data(512, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        i = torch.randint(0, len(x), (64,))
        logits = model(x[i]).view(heads, 64, CLASSES)
        loss = F.cross_entropy(logits.flatten(0, 1), y[i].repeat(heads))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def aux():
    torch.manual_seed(0)
    return train(attach_aux_blocks(Net(), at=["relu1", "relu2"], input_size=SHAPE, head="paper-mnist"), heads=3)


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return train(Net(), heads=1)


@pytest.fixture(scope="module")
def test_data():
    return make_data(48, seed=1)


class Quantize(nn.Module):
    """Bit-depth reduction (feature squeezing): round has zero gradient, so gradient attacks see nothing."""

    def forward(self, x):
        return torch.round(x * 8) / 8


@pytest.fixture(scope="module")
def masked(aux):
    # The public backbone stays un-quantised: transfer from it works, as for a real masking defence.
    model = copy.deepcopy(aux)
    model.normalize = Quantize()
    return model


def suite(model, data, names, **kwargs):
    return run_suite(model, data, suite=names, eps=EPS, budget=QUICK, batch_size=32, progress=False, **kwargs)


# ---- presets and argument checks ---------------------------------------------------------------


def test_presets_follow_the_paper_and_overrides_keep_the_step_ratio():
    assert (get_preset("mnist").eps, get_preset("mnist").step_size, get_preset("mnist").steps) == (0.3, 0.1, 5)
    assert get_preset("cifar10").eps == 8 / 255 and get_preset("CIFAR-10").step_size == 2 / 255
    assert get_preset("mini-imagenet").eps == 10 / 255 and get_preset("miniimagenet").step_size == 3 / 255
    assert get_preset("mnist").heads_steps == 2  # Table VI's two-iteration PGD
    assert get_preset("mnist", eps=0.15).step_size == pytest.approx(0.05)
    assert get_preset("somewhere-else").name == "default" and get_preset(None).eps == 8 / 255
    assert get_preset("mnist", eps=0.2, step_size=0.01, steps=7).step_size == 0.01
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
            get_preset("mnist", eps=bad)


def test_every_dataset_has_an_l2_preset_and_eps_is_checked_in_its_norm():
    assert (get_preset("cifar10", norm="l2").eps, get_preset("cifar10", norm="l2").norm) == (0.5, "l2")
    assert get_preset("mnist", norm="l2").eps == 2.0 and get_preset("mini-imagenet", norm="l2").eps == 3.0
    assert get_preset(None, norm="l2").eps == 0.5 and get_preset("mnist").norm == "linf"
    # The L-inf preset's step-to-eps ratio, and an eps above 1 is an L2 radius.
    assert get_preset("mnist", norm="l2").step_size == pytest.approx(2.0 / 3)
    assert get_preset("mnist", eps=3.0, norm="l2").step_size == pytest.approx(1.0)
    with pytest.raises(ValueError, match="an L2 radius needs norm l2"):
        get_preset("mnist", eps=2.0)
    with pytest.raises(ValueError, match=r"eps must be > 0 for l2"):
        get_preset("mnist", eps=0.0, norm="l2")
    with pytest.raises(ValueError, match=r"unknown norm 'L2'.*Valid norms: linf, l2"):
        get_preset("mnist", norm="L2")


def test_the_strong_cascade_in_l2_runs_every_stage_in_l2_inside_the_ball(aux, test_data):
    result = run_suite(aux, test_data, suite="strong", eps=0.5, norm="l2", rules=("vote",), budget=QUICK,
                       batch_size=32, progress=False)
    cascade = result.rows_of("strong")
    stages = [row.name.split(": ", 1)[1] for row in cascade]
    assert stages[0] == "APGD [vote-margin]" and stages[-2:] == ["Square", "Square x200 (escalated)"]
    assert any(stage.startswith("APGD-T [dlr-t-ensemble") for stage in stages)
    for row in cascade:
        assert row.threat == {"norm": "l2", "eps": 0.5} and row.config["norm"] == "l2"
        assert row.perturbation["l2_max"] <= 0.5
    assert cascade[0].outcome.accuracy("vote") < result.clean.accuracy("vote")
    assert result.preset.norm == "l2" and result.worst_case().norm == "l2"
    assert result.worst_case().attacks == [row.name for row in cascade]


def test_the_l2_curve_reads_one_l2_minimum_norm_run(aux, test_data):
    result = run_suite(aux, test_data, suite="curve", eps=0.5, norm="l2", rules=("vote",), batch_size=32,
                       progress=False, budget=Budget(fmn_steps=30, curve_eps=(0.1, 0.5, 2.0)))
    fmn = [row for row in result.rows_of("curve") if row.name.startswith("FMN")]
    assert [row.threat for row in fmn] == [{"norm": "l2", "eps": eps} for eps in (0.1, 0.5, 2.0)]
    assert fmn[0].config["norm"] == "l2"
    accuracies = [row.outcome.accuracy("vote") for row in fmn]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] > accuracies[-1]
    for row in fmn:  # every example that counts lies in that row's L2 ball, whatever its L-inf size
        assert row.perturbation["l2_max"] <= row.threat["eps"] + 1e-6
    assert "FMN [vote] eps=0.5" in result.worst_case().attacks and "FMN [vote] eps=2" not in result.worst_case().attacks


def test_unknown_suite_raises_listing_the_valid_ones(aux, test_data):
    assert parse_suites(" static, adaptive,static ") == ["static", "adaptive"]
    with pytest.raises(ValueError, match="unknown suite 'strnog'. Did you mean 'strong'.*static, adaptive, strong, sweep, curve, heads"):
        run_suite(aux, test_data, suite="static,strnog", progress=False)


def test_excluded_attacks_are_left_out_and_unknown_names_refused(aux, test_data):
    result = suite(aux, test_data, "static", exclude=["CW-L2", "Boundary"])
    assert [row.name for row in result.rows_of("static")] == ["PGD"]
    with pytest.raises(ValueError, match="cannot exclude CW: not planned; planned attacks: PGD, CW-L2, Boundary"):
        suite(aux, test_data, "static", exclude=["CW"])


def test_inputs_outside_the_pixel_box_and_foreign_labels_are_refused(aux, test_data):
    x, y = test_data
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*normalisation belongs inside the model"):
        run_suite(aux, (x * 2 - 0.5, y), progress=False)
    with pytest.raises(ValueError, match=r"labels span \d\.\.4 but the model has 4 classes"):
        run_suite(aux, (x, torch.where(y == 0, 4, y)), progress=False)
    with pytest.raises(ValueError, match="heads suite needs a model with aux heads"):
        run_suite(nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES)), test_data, suite="heads", progress=False)


def test_tensors_datasets_and_loaders_give_the_same_samples(test_data):
    x, y = test_data
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=7)):
        x_got, y_got, source = collect(data, n=20)
        assert torch.equal(x_got, x[:20]) and torch.equal(y_got, y[:20]) and source != "tensors"


# ---- suites ---------------------------------------------------------------------------------------


def test_undefended_model_is_broken_by_pgd(plain, test_data):
    result = suite(plain, test_data, "adaptive")
    clean = result.clean.accuracy("vote")
    assert clean >= 0.9
    adp_pgd = result.row("Adp-PGD")
    # One head: every rule is the backbone's own decision.
    assert adp_pgd.outcome.accuracy("vote") == adp_pgd.outcome.accuracy("public") == adp_pgd.outcome.head_accuracy()[0]
    assert adp_pgd.outcome.accuracy("vote") <= clean - 0.5
    assert adp_pgd.perturbation["linf_max"] <= EPS + 1e-7


def test_rows_carry_every_rule_and_head_and_runs_repeat(aux, test_data):
    first = suite(aux, test_data, "static,adaptive", seed=3)
    again = suite(aux, test_data, "static,adaptive", seed=3)
    assert [row.name for row in first.rows_of("static")] == ["PGD", "CW-L2", "Boundary"]
    assert [row.name for row in first.rows_of("adaptive")] == ["Adp-FGSM", "Adp-PGD"]
    for row, twin in zip(first.rows, again.rows):
        assert set(row.outcome.rules) == {"vote", "score", "public", "private"}
        assert row.outcome.heads.shape == (3, 48)
        assert all(torch.equal(row.outcome.rules[r], twin.outcome.rules[r]) for r in row.outcome.rules)
    static_pgd = first.row("PGD")
    assert static_pgd.kind == "transfer" and static_pgd.config["crafted_on"] == "public"
    # Crafted on the backbone, the static PGD hurts the public head more than the aux heads.
    public, *aux_heads = static_pgd.outcome.head_accuracy()
    assert public < max(aux_heads)


class FoolClasses:
    """A fake attack: samples of the chosen classes become the prototype of the next class."""

    seed, norm, kind = None, "linf", "white-box"

    def __init__(self, model, classes, eps=EPS):
        self.classes, self.eps = torch.tensor(classes), eps

    def __call__(self, x, y):
        hit = torch.isin(y, self.classes).view(-1, 1, 1, 1)
        return torch.where(hit, prototypes()[(y + 1) % CLASSES], x)


def fake(name, classes):
    return AttackPlan(name, "custom", lambda model: FoolClasses(model, classes), {"attack": "FoolClasses"})


def test_success_is_judged_by_the_defended_models_own_rules(aux, test_data):
    result = run_suite(aux, test_data, suite=[], attacks=[fake("fool 0,1", [0, 1])], eps=EPS, progress=False)
    x, y = test_data
    x_adv = FoolClasses(aux, [0, 1])(x, y)
    row = result.row("fool 0,1")
    for rule in ("vote", "score", "public", "private"):
        expected = result.clean.rules[rule] & (aux.predict(x_adv, rule) == y)
        assert torch.equal(row.outcome.rules[rule], expected)
    assert torch.equal(row.outcome.heads, result.clean.heads & (aux(x_adv).argmax(-1) == y))


def test_worst_case_is_the_per_sample_and_over_attacks(aux, test_data):
    result = run_suite(aux, test_data, suite=[], attacks=[fake("fool 0", [0]), fake("fool 1", [1])],
                       eps=EPS, progress=False)
    _, y = test_data
    a, b = result.row("fool 0"), result.row("fool 1")
    worst = worst_case(result.clean, [a, b], EPS)
    for rule in ("vote", "score"):
        assert torch.equal(worst.outcome.rules[rule], result.clean.rules[rule] & (y > 1))
        # Disjoint victims: the worst case is far below the best single attack's accuracy.
        assert worst.outcome.accuracy(rule) < min(a.outcome.accuracy(rule), b.outcome.accuracy(rule)) - 0.1
        broken_by = [worst.first_broken_by[rule][i] for i in range(len(y))]
        assert {broken_by[i] for i in range(len(y)) if y[i] == 0} <= {"fool 0", "clean"}
        assert {broken_by[i] for i in range(len(y)) if y[i] == 1} <= {"fool 1", "clean"}
    # The suite's own worst case also ANDs the sanity probes inside the budget: never above.
    assert result.worst_case().outcome.accuracy("vote") <= worst.outcome.accuracy("vote")
    assert "fool 0" in result.worst_case().attacks and not any("eps=1" in n for n in result.worst_case().attacks)


def test_strong_suite_is_a_cascade_on_the_points_still_robust(aux, test_data):
    result = suite(aux, test_data, "strong", rules=("vote",))
    cascade = result.rows_of("strong")
    assert [row.name for row in cascade] == [
        "Cascade [vote] 1: APGD [vote-margin]", "Cascade [vote] 2: APGD-CE [ensemble]",
        "Cascade [vote] 3: APGD-CE [mean-logits]", "Cascade [vote] 4: APGD-T [dlr-t-ensemble, 1 screened of top-3]",
        "Cascade [vote] 5: APGD-T [vote-tie, 2 nearest of top-3]", "Cascade [vote] 6: Square",
        "Cascade [vote] 7: Square x200 (escalated)"]
    assert all(row.kind == "cascade" for row in cascade)
    previous = result.clean.rules["vote"]
    for row in cascade:
        if "escalated" in row.name:  # only the survivors where an indicator of attack failure fires
            assert row.attacked <= int(previous.sum())
        else:
            assert row.attacked == int(previous.sum())  # each stage attacks exactly what is still robust
        assert not (row.outcome.rules["vote"] & ~previous).any()  # robust only if robust before
        previous = row.outcome.rules["vote"]
    assert torch.equal(result.worst_case().outcome.rules["vote"], cascade[-1].outcome.rules["vote"])


STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cifar10-resnet9-adversarial-cpu"


def test_the_vote_cascade_breaks_a_tie_that_only_the_ensemble_decides(data_root):
    """Regression: test point 419 of CIFAR-10 against the adversarial study's jointly trained Aux Block model.
    AutoAttack's APGD-T (targeted DLR on the ensemble) splits its four heads 2-2 between the true class and a
    target, and the ensemble's score, the vote's tie-break, then picks the target; the capped targeted vote
    margin stops once two heads flip and never got there, so the cascade called the point robust."""
    from auxsurgery.data import load_dataset
    from auxsurgery.studies import experiment

    x, y, _ = collect(load_dataset("cifar10", root=str(data_root), train=False), 420)
    x, y = x[419:], y[419:]
    model = experiment.trained_model(STUDY, "aux_adversarial_joint", num_classes=10)
    result = run_suite(model, (x, y), suite="strong", eps=0.03137, rules=("vote",), progress=False)
    broken_by = result.worst_case().first_broken_by["vote"][0]
    assert result.clean.rules["vote"].all() and not result.worst_case().outcome.rules["vote"].any()
    assert broken_by == "Cascade [vote] 4: APGD-T [dlr-t-ensemble, 2 screened of top-9]"


def test_the_score_cascade_tries_every_target_class(data_root):
    """Regression: test point 871 of CIFAR-10 against the adversarial study's worst-head model, score rule. The
    suite's targeted DLR ran at the 3 classes nearest by a linearised boundary distance and called it robust;
    AutoAttack's APGD-CE and 9-target APGD-T fooled it. The screened stage tries all 9 (alone, as the cascade's
    mean-logit transfer stage now breaks the point before it)."""
    from auxsurgery.data import load_dataset
    from auxsurgery.studies import experiment

    x, y, _ = collect(load_dataset("cifar10", root=str(data_root), train=False), 872)
    model = experiment.trained_model(STUDY, "aux_adversarial_max", num_classes=10)
    result = run_suite(model, (x[871:], y[871:]), suite="strong", eps=0.03137, rules=("score",), progress=False,
                       standalone=True)
    assert result.clean.rules["score"].all() and not result.worst_case().outcome.rules["score"].any()
    assert not result.row("APGD-T [dlr-t-ensemble, 2 screened of top-9] [score]").outcome.rules["score"].any()


def test_cascade_gives_the_worst_case_of_the_standalone_attacks(aux, test_data):
    """The same attacks, run alone on every point or as a cascade on the survivors, break the same points.

    Exact here because every attack is deterministic given its batch and the fooled points are judged
    by the same rule; the cascade reaches it attacking fewer points.
    """
    both = suite(aux, test_data, "strong", rules=("vote",), standalone=True)
    alone = [row for row in both.rows_of("strong") if row.kind != "cascade"]
    cascade = [row for row in both.rows_of("strong") if row.kind == "cascade" and "escalated" not in row.name]
    assert len(alone) == len(cascade) == 6
    union = both.clean
    for row in alone:
        union = union & row.outcome
    assert torch.equal(union.rules["vote"], cascade[-1].outcome.rules["vote"])
    assert sum(row.attacked for row in cascade) < sum(row.attacked for row in alone)


def test_a_second_rule_cascade_starts_from_what_the_first_left(aux, test_data):
    result = suite(aux, test_data, "strong", rules=("vote", "score"))
    votes = [row for row in result.rows_of("strong") if row.name.startswith("Cascade [vote]")]
    scores = [row for row in result.rows_of("strong") if row.name.startswith("Cascade [score]")]
    assert scores[0].attacked == int(votes[-1].outcome.rules["score"].sum())


def test_a_result_prints_a_short_summary_and_offers_it_as_a_dict(aux, test_data):
    """print(run_suite(...)): threat model, budget, clean and worst case per rule, each cascade by stage (the
    second starting from what the first left), every attack; no per-sample tensors."""
    result = suite(aux, test_data, "adaptive,strong", rules=("vote", "score"))
    summary, worst = result.to_dict(), result.worst_case()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["budget"] == "quick" and summary["threat"] == {"norm": "linf", "eps": EPS}
    assert summary["worst_case"] == {r: worst.outcome.accuracy(r) for r in ("vote", "score")}
    assert summary["attacks"]["Adp-PGD"]["vote"] == result.row("Adp-PGD").outcome.accuracy("vote")
    vote, score = summary["cascade_stages"]
    assert (vote["cascade"], vote["rule"], vote["start"]) == ("Cascade [vote]", "vote", "earlier attacks")
    assert [s["attack"] for s in vote["stages"]] == ["APGD [vote-margin]", "APGD-CE [ensemble]",
                                                     "APGD-CE [mean-logits]",
                                                     "APGD-T [dlr-t-ensemble, 1 screened of top-3]",
                                                     "APGD-T [vote-tie, 2 nearest of top-3]", "Square"]
    assert [s["attack"] for s in score["stages"]] == ["APGD [ensemble]", "APGD-DLR [dlr-ensemble]",
                                                      "APGD-CE [mean-logits]",
                                                      "APGD-T [dlr-t-ensemble, 1 screened of top-3]", "Square"]
    assert vote["stages"][-1]["accuracy"] == result.row("Cascade [vote] 6: Square").outcome.accuracy("vote")
    assert score["start_accuracy"] == result.row("Cascade [vote] 6: Square").outcome.accuracy("score")
    text = str(result)
    assert f"worst case ({len(worst.attacks)} attacks): vote {100 * worst.outcome.accuracy('vote'):.1f}%" in text
    assert "Cascade [vote], vote accuracy: earlier attacks " in text and "tensor" not in text
    assert repr(result).startswith(f"SuiteResult(n={result.n}, suites=adaptive,strong") and "\n" not in repr(result)
    assert repr(result.row("Adp-PGD")).startswith("AttackRow('Adp-PGD', white-box, Linf 0.1: vote ")


# ---- sanity checks ---------------------------------------------------------------------------------


def test_sanity_checks_stay_quiet_on_a_normal_model(aux, test_data):
    result = suite(aux, test_data, "static,adaptive,sweep")
    assert result.warnings == []
    assert [f.check for f in result.findings] == ["baseline", "bounds"]  # the static suite is labelled a baseline
    bounds = result.findings[1].message  # and the largest perturbation of each threat model is reported
    assert "largest linf perturbation" in bounds and "largest l2 perturbation" in bounds and "[0, 1]" in bounds
    sweep = sorted((row for row in result.rows_of("sweep") if row.series[0] == "Adp-PGD vs eps"),
                   key=lambda r: r.series[2])
    assert sweep[-1].threat["eps"] == 1.0 and sweep[-1].outcome.accuracy("vote") == 0.0


def test_sanity_checks_fire_on_a_masked_gradient_model(masked, test_data):
    result = suite(masked, test_data, "static,adaptive,strong", rules=("vote",), standalone=True)
    checks = {f.check for f in result.warnings}
    assert {"large-eps", "masking"} <= checks
    assert result.row("Adp-PGD").outcome.accuracy("vote") > 0.9  # gradient attacks see nothing...
    assert result.row("Square [vote]").outcome.accuracy("vote") < 0.9  # ...gradient-free ones do
    assert "zero-gradient" in checks  # rounding has zero gradient: seen before any attack runs
    masking = next(f for f in result.warnings if f.check == "masking")
    assert "transfer" in masking.message or "score-based" in masking.message


# ---- heads study and reports -----------------------------------------------------------------------


def test_report_writes_json_markdown_and_plots(aux, test_data, tmp_path):
    result = suite(aux, test_data, "static,adaptive,sweep,heads")
    study = result.heads_study()
    assert len(study.matrix) == 3 and all(len(row) == 3 for row in study.matrix)
    assert study.table_vi() == dict(zip(["public", "relu1", "relu2"], study.matrix[0]))
    for k in range(3):  # a head attacked directly does no better than on clean inputs
        assert study.matrix[k][k] <= study.clean[k]
    assert all(ratio > 0 for ratio in study.loss_ratio)

    paths = {p.name: p for p in write_report(result, tmp_path)}
    assert set(paths) == {"results.json", "report.md", "accuracy_vs_eps.png", "transfer_heatmap.png"}
    for png in ("accuracy_vs_eps.png", "transfer_heatmap.png"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(paths["results.json"].read_text())
    validate_results(doc)
    assert doc["schema"] == SCHEMA == "auxsurgery.results/1"
    assert doc["data"]["n"] == 48 and len(doc["per_sample"]["robust"]["vote"]) == 48
    assert doc["model"]["head_names"] == ["public", "relu1", "relu2"]
    assert doc["heads_study"]["transfer_matrix"] == study.matrix
    assert doc["settings"]["preset"]["eps"] == EPS
    report = paths["report.md"].read_text()
    assert "Table II" in report and "Table VII" in report and "Table VI" in report
    assert "| vote (Alg. 1, all heads) |" in report and "![transfer matrix](transfer_heatmap.png)" in report

    broken = copy.deepcopy(doc)
    del broken["worst_case"]
    with pytest.raises(ValueError, match="missing field 'worst_case'"):
        validate_results(broken)
    broken = copy.deepcopy(doc)
    broken["attacks"][0]["rules"].pop("vote")
    with pytest.raises(ValueError, match="every rule and head"):
        validate_results(broken)
    assert results_document(result)["schema"] == SCHEMA


def test_one_minimum_norm_run_gives_the_whole_curve(aux, test_data):
    result = run_suite(aux, test_data, suite="curve", eps=EPS, rules=("vote",), batch_size=32, progress=False,
                       budget=Budget(fmn_steps=30, curve_eps=(0.02, 0.1, 0.3)))
    fmn = [row for row in result.rows_of("curve") if row.name.startswith("FMN")]
    assert [row.name for row in fmn] == ["FMN [vote] eps=0.02", "FMN [vote] eps=0.1", "FMN [vote] eps=0.3"]
    accuracies = [row.outcome.accuracy("vote") for row in fmn]
    assert accuracies == sorted(accuracies, reverse=True)  # a larger ball never leaves more accuracy
    assert accuracies[0] > accuracies[-1]
    assert fmn[0].seconds > 0 and fmn[1].seconds == fmn[2].seconds == 0  # one run, counted once
    for row in fmn:  # every example that counts lies in that row's ball
        assert row.perturbation["linf_max"] <= row.threat["eps"] + 1e-6
    # The rows at or below the preset eps take part in the worst case.
    assert "FMN [vote] eps=0.1" in result.worst_case().attacks and "FMN [vote] eps=0.3" not in result.worst_case().attacks


def test_bf16_attack_steps_are_recorded_and_judged_in_fp32(aux, test_data):
    half = suite(aux, test_data, "adaptive,strong", rules=("vote",), precision="bf16")
    assert half.settings["precision"] == "bf16"
    cascade = [row for row in half.rows_of("strong")]
    assert all(row.config.get("precision") == "bf16" for row in cascade if row.config["attack"] != "Square")
    full = suite(aux, test_data, "adaptive,strong", rules=("vote",))
    # Success is judged by the fp32 model either way: the two worst cases differ by a few points at most.
    assert abs(half.worst_case().outcome.accuracy("vote") - full.worst_case().outcome.accuracy("vote")) <= 0.1
    with pytest.raises(ValueError, match="unknown attack precision 'fp16'; valid: fp32, bf16"):
        suite(aux, test_data, "adaptive", precision="fp16")
    with pytest.warns(DeprecationWarning, match=r"run_suite\(\): attack_dtype= is deprecated .* use precision="):
        renamed = suite(aux, test_data, "static", rules=("vote",), attack_dtype="bf16")
    assert renamed.settings["precision"] == "bf16"
