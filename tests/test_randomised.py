"""Randomised models: expectation over transformation (EOT) in the gradient steps, majority-of-draws verdicts."""
import pytest
import torch
from torch import nn

from auxsurgery.attacks import APGD, PGD, PassCounter, is_adversarial
from auxsurgery.evaluation import Budget, run_suite, write_report

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.05


class Jitter(nn.Module):
    """A linear classifier whose every forward adds a small, fast-oscillating term of random sign.

    The term moves a logit by at most ``amp`` (the decisions barely change) but its gradient is ``freq``
    times larger than the linear part's and its sign is a coin flip per forward: one draw's gradient
    points anywhere, while the expectation over draws is the linear model's, which an attack can follow.
    """

    def __init__(self, amp: float = 0.02, freq: float = 200.0, d: int = 64, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(d, classes, generator=g))
        self.register_buffer("v", torch.randn(d, classes, generator=g))
        self.amp, self.freq = amp, freq

    def forward(self, x):
        z = x.flatten(1) - 0.5
        sign = torch.randint(0, 2, (x.shape[0], 1), device=x.device) * 2 - 1
        return z @ self.w + self.amp * sign * torch.sin(self.freq * (z @ self.v))


def points(model: Jitter, n: int = 100):
    x = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = ((x.flatten(1) - 0.5) @ model.w).argmax(1)  # the expected model's decision: every point clean-correct
    return x, y


def test_eot_breaks_points_that_single_draw_apgd_leaves():
    torch.manual_seed(0)
    model = Jitter().eval()
    x, y = points(model)

    def robust(eot):
        x_adv = APGD(model, eps=EPS, steps=10, seed=0).with_draws(eot, 9)(x, y)
        assert (x_adv - x).abs().max() <= EPS
        return (~is_adversarial(model, x_adv, y, draws=9)).float().mean().item()

    single, averaged = robust(1), robust(20)
    model.amp = 0.0  # the expectation alone: what a perfect EOT attack would reach
    expected = robust(1)
    assert single > averaged + 0.15  # one draw's gradient is noise: single-draw APGD leaves many points
    assert averaged <= expected + 0.05  # the average of 20 draws follows the expected model's gradient


def test_a_randomised_model_gets_eot_and_a_majority_judge_by_default(tmp_path):
    torch.manual_seed(0)
    model = Jitter().eval()
    x, y = points(model)
    run = dict(suite="strong", eps=EPS, budget=Budget.quick(), batch_size=50, progress=False)
    drawn = run_suite(model, (x, y), **run)
    assert drawn.settings["protocol"] == {"randomised": True, "eot": 20, "judge_draws": 9, "surrogate_eot": 1}
    protocol = next(f for f in drawn.findings if f.check == "protocol")
    assert protocol.level == "note" and "majority of 9" in protocol.message and "20 draw(s)" in protocol.message
    single = run_suite(model, (x, y), eot=1, **run)
    assert next(f for f in single.findings if f.check == "protocol").level == "warning"
    first = drawn.rows[0].outcome.accuracy("vote"), single.rows[0].outcome.accuracy("vote")
    assert first[0] < first[1] - 0.15  # APGD-CE, the cascade's first stage, with and without EOT
    assert drawn.worst_case().outcome.accuracy("vote") <= single.worst_case().outcome.accuracy("vote")
    # Every draw counts: the gradient stage's backward passes are 20 per step and point, or nearly.
    assert drawn.rows[0].passes.backward > 10 * single.rows[0].passes.backward
    assert "judge: every verdict, clean included, is the majority of 9 forward(s)" in str(drawn)
    write_report(drawn, tmp_path)
    assert "majority of 9 forward(s); each gradient step averages 20 draw(s)" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="judge_draws must be odd"):
        run_suite(model, (x, y), judge_draws=4, **run)
    with pytest.raises(ValueError, match="eot must be an integer >= 1, got 0"):
        run_suite(model, (x, y), eot=0, **run)


class Saturated(nn.Module):
    """:class:`Jitter` with its logits times 1,000: on most points the cross-entropy's softmax is exactly one-hot in
    fp32, so its gradient is exactly zero in every draw, while the scale-free DLR's still points somewhere."""

    def __init__(self):
        super().__init__()
        self.jitter = Jitter()

    def forward(self, x):
        return 1e3 * self.jitter(x)


def test_a_randomised_model_s_cascade_also_runs_autoattack_rand_s_apgd_dlr():
    torch.manual_seed(0)
    model = Saturated().eval()
    x, y = points(model.jitter)
    run = dict(suite="strong", eps=EPS, budget=Budget.quick(), batch_size=50, progress=False)

    def stages(result):
        return {row.name.split(": ", 1)[-1]: row.outcome.accuracy("vote") for row in result.rows if row.cascade}

    drawn = stages(run_suite(model, (x, y), **run))
    assert list(drawn)[:2] == ["APGD-CE", "APGD-DLR [dlr-public]"]
    # Robust after each stage: the cross-entropy's zero gradients leave most points, the DLR breaks them.
    assert drawn["APGD-CE"] > 0.5 and drawn["APGD-DLR [dlr-public]"] < drawn["APGD-CE"] - 0.3
    single = stages(run_suite(model, (x, y), eot=1, judge_draws=1, **run))
    assert "APGD-DLR [dlr-public]" not in single  # a run without draws keeps the deterministic cascade


class GaussianInput(nn.Module):
    """``model`` seeing its input with Gaussian noise added (a randomised-smoothing style defence)."""

    def __init__(self, model: nn.Module, std: float):
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x):
        return self.model(x + self.std * torch.randn_like(x))


def test_two_runs_of_the_majority_judge_agree_where_single_draws_do_not():
    torch.manual_seed(0)
    model = GaussianInput(Jitter(amp=0.0), std=0.05).eval()
    x, y = points(model.model, 400)
    x = (x + 0.04 * torch.sign(torch.randn_like(x))).clamp(0, 1)  # nearer the boundary, where draws disagree

    def agreement(draws):
        return (is_adversarial(model, x, y, draws=draws) == is_adversarial(model, x, y, draws=draws)).float().mean()

    assert agreement(1) < 0.9 and agreement(15) > 0.95
    with pytest.raises(ValueError, match="draws must be odd"):
        is_adversarial(model, x, y, draws=2)


def test_a_deterministic_model_runs_exactly_as_without_draws():
    torch.manual_seed(0)
    model = Jitter(amp=0.0).eval()
    x, y = points(model, 48)
    run = dict(suite="adaptive,strong", eps=EPS, budget=Budget.quick(), batch_size=16, progress=False)
    auto = run_suite(model, (x, y), **run)
    assert auto.settings["protocol"] == {"randomised": False, "eot": 1, "judge_draws": 1, "surrogate_eot": 1}
    assert not any(f.check == "protocol" for f in auto.findings)
    plain = run_suite(model, (x, y), eot=1, judge_draws=1, **run)
    for a, b in zip(auto.rows, plain.rows):
        assert a.outcome.rules["vote"].tolist() == b.outcome.rules["vote"].tolist() and a.passes == b.passes
    # One forward and one backward per step and point, as before draws existed.
    attack = PGD(model, eps=EPS, steps=5, early_stop=False, random_start=False)
    with PassCounter(model) as passes:
        attack(x, y)
    assert (passes.forward, passes.backward) == (5 * 48, 5 * 48)
    with PassCounter(model) as passes:
        attack.with_draws(3, 1)(x, y)
    assert (passes.forward, passes.backward) == (15 * 48, 15 * 48)  # EOT's draws are counted


def test_the_committed_judge_agreement_record_backs_the_default_judge():
    import importlib.util
    import json
    from pathlib import Path

    from auxsurgery.evaluation.runner import DEFAULT_JUDGE_DRAWS

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("judge_agreement", repo / "benchmarks" / "judge_agreement.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    folder = repo / "benchmarks" / "results" / "judge_agreement"
    doc = json.loads((folder / "judge_agreement.json").read_text())
    assert benchmark.render(doc) == (folder / "judge_agreement.md").read_text()
    record = next(r for r in doc["records"] if r["draws"] == DEFAULT_JUDGE_DRAWS)
    assert min(record["clean"], record["examples"]) >= 0.99
