"""``run_suite(transfer_from=...)``: gradient attacks crafted on a surrogate, every example judged by the attacked
model."""
import json

import pytest
import torch
from torch import nn

from auxsurgery.evaluation import Budget, run_suite, write_report
from auxsurgery.evaluation.state import StateError

pytestmark = pytest.mark.usefixtures("single_thread")

EPS, CLASSES = 0.05, 4


class Members(nn.Module):
    """Three linear classifiers around one shared direction: logits ``[3, B, C]``."""

    def __init__(self, d: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        shared = torch.randn(d, CLASSES, generator=g)
        self.w = nn.Parameter(shared + 0.5 * torch.randn(3, d, CLASSES, generator=g))

    def forward(self, x):
        return torch.einsum("bd,kdc->kbc", x.flatten(1) - 0.5, self.w)


class Voting(nn.Module):
    """A plain classifier hiding a non-differentiable aggregation: each member's (rounded, one-hot) vote, summed.

    Its input gradient is exactly zero everywhere, so gradient attacks on it see nothing."""

    def __init__(self, members: Members):
        super().__init__()
        self.members = members

    def forward(self, x):
        return torch.round(torch.softmax(self.members(x) / 1e-3, -1)).sum(0)


class MeanLogits(nn.Module):
    """The voting model's smooth twin: the members' mean logits."""

    def __init__(self, members: Members):
        super().__init__()
        self.members = members

    def forward(self, x):
        return self.members(x).mean(0)


@pytest.fixture(scope="module")
def models():
    members = Members().eval()
    return Voting(members).eval(), MeanLogits(members).eval()


@pytest.fixture(scope="module")
def data(models):
    x = torch.rand((60, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, models[0](x).argmax(1)


RUN = dict(suite="strong", eps=EPS, budget=Budget.quick(), batch_size=30, progress=False)


def test_a_hidden_vote_falls_to_attacks_crafted_on_its_smooth_twin(models, data, tmp_path):
    voting, twin = models
    alone = run_suite(voting, data, **RUN)
    assert any(f.check == "zero-gradient" for f in alone.warnings)  # the vote's gradient is zero
    transferred = run_suite(voting, data, transfer_from=twin, keep_adversarial=True, **RUN)
    robust = transferred.worst_case().outcome.accuracy("vote")
    assert robust < alone.worst_case().outcome.accuracy("vote") - 0.2
    gradient_rows = [row for row in transferred.rows if row.config["attack"] != "Square" and row.suite == "strong"]
    assert gradient_rows and all(row.config["crafted_on"] == "surrogate" for row in gradient_rows)
    probe = next(row for row in transferred.rows if row.suite == "sanity")
    assert probe.config["crafted_on"] == "defended"  # the probes check the attacked model's own gradients
    x, _ = data
    for row in transferred.rows:  # every example inside its ball and the pixel box
        if row.adversarial is not None and row.threat["eps"] is not None:
            indices, examples = row.adversarial
            assert (examples - x[indices]).abs().max() <= row.threat["eps"]
            assert examples.min() >= 0 and examples.max() <= 1
    assert transferred.settings["transfer_from"]["class"] == "MeanLogits"
    assert any(f.check == "transfer" and "MeanLogits" in f.message for f in transferred.findings)
    write_report(transferred, tmp_path)
    assert "crafted on the surrogate MeanLogits" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["transfer_from"]["sha256"]


class Decision(nn.Module):
    """The hidden vote as a deployed model may return it: one-hot, with no autograd graph behind it."""

    def __init__(self, voting: Voting):
        super().__init__()
        self.voting = voting

    def forward(self, x):
        with torch.no_grad():
            return self.voting(x)


def test_a_decision_with_no_graph_is_a_zero_gradient_not_an_error(models, data):
    voting, twin = models
    decision = Decision(voting).eval()
    alone = run_suite(decision, data, **RUN)
    assert any(f.check == "zero-gradient" for f in alone.warnings)
    transferred = run_suite(decision, data, transfer_from=twin, **RUN)
    assert transferred.worst_case().outcome.accuracy("vote") < alone.worst_case().outcome.accuracy("vote") - 0.2


def test_a_resume_with_another_surrogate_is_refused(models, data, tmp_path):
    voting, twin = models
    state = tmp_path / "state"
    run = dict(RUN, suite="adaptive", state_dir=state)
    run_suite(voting, data, transfer_from=twin, **run)
    other = MeanLogits(Members())
    with torch.no_grad():
        other.members.w.mul_(2)
    with pytest.raises(StateError, match="transfer_from changed"):
        run_suite(voting, data, transfer_from=other, **run)
    with pytest.raises(StateError, match="transfer_from changed"):
        run_suite(voting, data, **run)


def test_a_surrogate_must_fit_the_attacked_model(models, data):
    voting, _ = models
    with pytest.raises(ValueError, match="transfer_from scores 3 classes, the attacked model 4"):
        run_suite(voting, data, transfer_from=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), **RUN)


def test_the_attack_command_takes_a_surrogate_and_the_draws(tmp_path):
    from typer.testing import CliRunner
    import typer

    from auxsurgery import attach_aux_blocks, save
    from auxsurgery.cli import attack as attack_command

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(attack_command.attack)
    torch.manual_seed(0)
    target = save(attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head="paper-mnist"), tmp_path / "t.st")
    surrogate = save(attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head="paper-mnist"),
                     tmp_path / "s.st")
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "test.pt"
    torch.save({"x": torch.rand((6, 1, 28, 28), generator=g), "y": torch.randint(0, 10, (6,), generator=g)}, data)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [str(target), "--data", str(data), "--quick", "--suite", "adaptive", "--eot", "2",
                                      "--judge-draws", "3", "--transfer-from", str(surrogate), "--out", str(out)])
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["protocol"] == {"randomised": False, "eot": 2, "judge_draws": 3, "surrogate_eot": 2}
    assert settings["transfer_from"]["checkpoint"] == str(surrogate)
    assert f"checkpoint {surrogate}" in (out / "report.md").read_text()
    missing = CliRunner().invoke(app, [str(target), "--data", str(data), "--quick", "--transfer-from",
                                       str(tmp_path / "nowhere.st")])
    assert isinstance(missing.exception, ValueError) and "--transfer-from" in str(missing.exception)


def test_crafting_on_the_surrogate_until_the_target_is_fooled_transfers_better(models, data):
    from auxsurgery.attacks import APGD, Transfer, is_adversarial

    voting, twin = models
    x, y = data

    def fooled(query_target):
        attack = Transfer(voting, APGD(twin, eps=0.03, steps=10, seed=0), query_target=query_target)
        attack.seed = 3  # the runner reseeds the outer attack per batch: the crafting follows
        x_adv = attack(x, y)
        assert attack.attack.seed == 3 and (x_adv - x).abs().max() <= 0.03
        return is_adversarial(voting, x_adv, y).float().mean().item()

    # Stopping once the surrogate is fooled leaves examples at its boundary, which the target often does not share.
    assert fooled(True) > fooled(False) + 0.05
