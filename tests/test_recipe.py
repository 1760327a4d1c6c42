"""Recipes: validation errors that name the file, key and choices; `auxsurgery run` end to end and resumed."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from auxsurgery.data import dataset_classes, load_dataset
from auxsurgery.evaluation.confidence import paired_difference_interval
from auxsurgery.studies import experiment
from auxsurgery.studies.paper import paper_value
from auxsurgery.studies.recipe import RecipeError, load_recipe, parse_recipe
from auxsurgery.train import evaluate

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
BASE = """
[recipe]
name = "tiny"
paper = "mnist"
[data]
name = "synthetic"
[backbone]
name = "small_cnn"
"""
# One short epoch of every model a recipe trains.
QUICK_TRAIN = """
[train]
epochs = 1
batch_size = 32
optimizer = "adamw"
lr = 0.003
amp = "off"
"""
# A run of a few seconds: every stage and every suite, nothing measured seriously.
TINY = BASE.replace('name = "synthetic"', 'name = "synthetic"\ntrain_subset = 128\nheld_out = 32') + QUICK_TRAIN + """
[adversarial]
enabled = true
preset = "cifar10"
steps = 1
[aux]
at = "stage1,stage2"
[attack]
suites = ["static", "adaptive", "strong"]
n = 12
[attack.budget]
apgd_steps = 2
square_queries = 4
cw_steps = 2
cw_search_steps = 1
boundary_steps = 3
target_classes = 2
probe_steps = 1
[[attack.readings]]
name = "wide"
eps = 0.06
[[attack.readings]]
name = "narrow"
eps = 0.02
exclude = ["CW-L2", "Boundary"]
[attack.curve]
eps = [0.02, 0.06]
apgd_steps = 2
"""


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    # Every shipped recipe reproduces a paper setting, except the demo's embedded data.
    assert recipe["recipe"]["paper"] in ("mnist", "cifar10", "mini-imagenet") or path.stem == "demo"


def test_paper_recipes_use_table_iii_and_section_iv_settings():
    mnist = load_recipe(Path("recipes/mnist-lenet5.toml"))
    config = mnist.train_config("undefended")
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size, config.epochs) == (0.01, 0.5, 0.0, 128, 20)
    assert [(r["eps"], r["step_size"]) for r in mnist["attack"]["readings"]] == [(0.3, 0.1), (0.09243, 0.03081)]
    cifar = load_recipe(Path("recipes/cifar10-vgg16.toml")).train_config("aux")
    assert (cifar.momentum, cifar.weight_decay, cifar.epochs, cifar.milestones) == (0.9, 5e-4, 100, (50,))


@pytest.mark.parametrize("snippet, expected", [
    ("[train]\nepoch = 3", ["recipes/x.toml", "[train]", "'epoch'", "Did you mean 'epochs'", "Valid keys:"]),
    ("[train]\nepochs = \"ten\"", ["recipes/x.toml", "[train] epochs", "must be an integer", "'ten'"]),
    ("[aux.train]\nlr = \"fast\"", ["[aux.train] lr", "must be a number"]),
    ("[attack]\nn = true", ["[attack] n", "must be an integer"]),
    ("[recipe2]\nx = 1", ["unknown section [recipe2]", "Valid sections: recipe, data"]),
    ("[aux]\nhead = \"paper-mnst\"", ["[aux] head", "paper-mnist"]),
    ("[aux]\ninit = \"pretrained\"", ["[aux] init", "valid: undefended, scratch"]),
    ("[attack]\nsuites = [\"statc\"]", ["[attack] suites", "valid: static, adaptive, strong"]),
    ("[attack]\nrules = [\"majority\"]", ["[attack] rules", "valid rules: vote, score, public, private"]),
    ("[train]\noptimizer = \"adam\"", ["[train]", "unknown optimizer 'adam'", "valid: sgd, adamw"]),
    ("[[attack.readings]]\nname = \"a\"", ["[attack.readings[0]] eps is required"]),
    ("[[attack.readings]]\nname = \"a\"\neps = 2", ["[attack.readings[0]] eps", "(0, 1]", "for linf"]),
    ("[attack]\nnorm = \"l1\"", ["[attack] norm", "valid: linf, l2"]),
    ("[[aux_adversarial]]\nname = \"a\"\neps = 1.5", ["[[aux_adversarial]] name = \"a\"", "<= 1 for linf"]),
    ("[undefended]\nenabled = false", ["[aux] init", "[undefended] enabled"]),
    ("[adversarial]\nenabled = true", ["[adversarial]", "set preset"]),
    ("[adversarial]\nenabled = true\neps = 0.03\nmethod = \"trade\"", ["[adversarial]", "'trade'", "trades"]),
    ("[[aux_adversarial]]\nname = \"max\"\neps = 0.03\nobjective = \"max\"", ['name = "max"', "max-head"]),
    ("[[aux_adversarial]]\nname = \"../x\"\neps = 0.03", ["[[aux_adversarial]] name", "path separator"]),
    ("[[aux_adversarial]]\nname = \"a\"\neps = 0.03\n[[aux_adversarial]]\nname = \"a\"\neps = 0.03",
     ["names must differ"]),
    ("[[aux_adversarial]]\nname = \"a\"", ['[[aux_adversarial]] name = "a"', "set preset"]),
    ("[[aux_adversarial]]\nname = \"a\"\neps = 0.03\nhead = \"wide\"", ["head", "unknown head preset 'wide'"]),
    ("[[aux_adversarial]]\nname = \"a\"\neps = 0.03\nepochs = 3", ["unknown key 'epochs'"]),
    ("[attack]\nn = 0", ["[attack] n", "must be >= 1, got 0"]),
    ("[attack]\njudge_draws = 4", ["[attack] judge_draws", "must be odd", "got 4"]),
    ("[attack]\neot = 0", ["[attack] eot", "must be >= 1, got 0"]),
    ("[attack]\nrules = [\"scor\"]", ["[attack] rules", "Did you mean 'score'?"]),
    ("[[attack.readings]]\nname = \"../out\"\neps = 0.1", ["[attack.readings[0]] name", "path separator"]),
    ("[[attack.readings]]\nname = \"curve\"\neps = 0.1", ["[attack.readings[0]] name", "accuracy-vs-eps run"]),
])
def test_bad_recipes_name_file_key_and_choices(snippet, expected):
    with pytest.raises(RecipeError) as err:
        parse_recipe(BASE + snippet, "recipes/x.toml")
    for text in expected:
        assert text in str(err.value)


def test_recipes_validate_on_held_out_training_images_never_on_the_test_set():
    recipe = parse_recipe(TINY)
    data = experiment._load_data(recipe, None)
    train, val = data.train, data.val
    assert (len(train), len(val)) == (128, 32)  # train_subset trained on, held_out validated on
    assert not set(train.indices) & set(val.indices) and sorted(train.indices + val.indices) == list(range(160))
    # The validation images are training images (un-augmented), none of them a test image.
    pool = load_dataset("synthetic", train=True, augment=False, subset=160)
    test_images = {image.numpy().tobytes() for image, _ in data.test}
    for k, index in enumerate(val.indices):
        assert torch.equal(val[k][0], pool[index][0]) and val[k][0].numpy().tobytes() not in test_images
    # Drawn from [recipe] seed: the same split every run, another for another seed.
    assert experiment._load_data(recipe, None).val.indices == val.indices
    assert experiment._load_data(recipe.changed({"recipe.seed": 1}), None).val.indices != val.indices


def test_a_hold_out_the_data_cannot_give_and_the_retired_val_subset_get_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"\[data\] val_subset: recipes no longer validate on test images; write "
                                          r"held_out = N"):
        parse_recipe(BASE.replace('name = "synthetic"', 'name = "synthetic"\nval_subset = 100'))
    with pytest.raises(RecipeError, match=r"\[data\] held_out: must be >= 1"):
        parse_recipe(BASE.replace('name = "synthetic"', 'name = "synthetic"\nheld_out = 0'))
    # An ImageFolder of 4 images cannot hold 4 out, nor give train_subset + held_out = 6.
    for k, name in enumerate(["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (60 * k, 0, 0)).save(tmp_path / name)
    for keys, message in [("held_out = 4", "cannot hold out 4 of 4 training images"),
                          ("train_subset = 4\nheld_out = 2", "subset of 6 samples asked from a dataset of 4")]:
        recipe = parse_recipe(BASE.replace('name = "synthetic"', f'name = "{tmp_path}"\n{keys}'), "x.toml")
        with pytest.raises(RecipeError, match=rf"x.toml: \[data\] train_subset, held_out: {message}.*; lower them"):
            experiment._load_data(recipe, None)


def test_a_run_made_before_held_out_still_reads_as_it_ran():
    """The committed runs validated on test images (val_subset): their recipe files no longer validate, and the
    benchmarks read them as they ran."""
    run = Path(__file__).parent.parent / "benchmarks" / "results" / "cifar10-resnet9-adversarial-cpu"
    with pytest.raises(RecipeError, match="val_subset: recipes no longer validate on test images"):
        load_recipe(run / "recipe.toml")
    recipe = experiment.recorded_recipe(run)
    assert recipe["data"]["val_subset"] == 1000 and "aux_adversarial_joint" in recipe.stages()
    # Made before the L2 threat model too: it recorded no norm, and its radii read as the L-inf ones they were.
    assert "norm" not in json.loads((run / "recipe.json").read_text())["attack"]
    assert recipe["attack"]["norm"] == "linf"


@pytest.mark.parametrize("old, new, expected", [
    ('name = "synthetic"', 'name = "synthetic"\ntrain_subset = -5', "[data] train_subset: must be >= 1, got -5"),
    ('name = "synthetic"', 'name = "synthetic"\ntrain_subset = 100000000000',
     "[data] train_subset: the synthetic set of 100,000,001,000 images needs"),
    ('name = "tiny"', f'name = "{"a" * 300}"', "[recipe] name: 'aaaa"),  # too long for a folder name
    ('name = "tiny"', 'name = "tiny\u202egnp.exe"', "use at most 64 ASCII letters, digits and - _ . +"),  # bidi
    ('name = "tiny"', 'name = "-tiny"', "starting with a letter or digit"),
])
def test_sizes_and_names_that_cannot_work_are_refused_at_check(monkeypatch, old, new, expected):
    monkeypatch.setattr("auxsurgery._utils.available_memory", lambda: 64 * 10**9)  # the same on every machine
    with pytest.raises(RecipeError) as err:
        parse_recipe(BASE.replace(old, new, 1), "recipes/x.toml")
    assert str(err.value).startswith("recipes/x.toml: ") and expected in str(err.value)


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.replace('"tiny"', '"caf\xe9"').encode("latin-1"))
    with pytest.raises(RecipeError, match=f"^{path}: not UTF-8 text \\(byte 21 is b'\\\\xe9'\\): save the recipe as "
                                          "UTF-8$"):
        load_recipe(path)


def test_an_l2_recipe_takes_l2_radii_and_no_paper_column():
    base = BASE.replace('paper = "mnist"', 'paper = "none"') + '[attack]\nnorm = "l2"\n'
    recipe = parse_recipe(base + '[[attack.readings]]\nname = "robustbench"\neps = 2.0\n'
                                 '[[aux_adversarial]]\nname = "l2"\neps = 1.5\nnorm = "l2"\nmethod = "fgsm"\n')
    assert recipe["attack"]["norm"] == "l2" and recipe["attack"]["readings"][0]["eps"] == 2.0
    assert recipe.adversarial_config("aux_adversarial_l2").norm == "l2"
    with pytest.raises(RecipeError, match=r"\[attack.curve\] eps: every eps must lie in \(0, inf\) for l2"):
        parse_recipe(base + "[attack.curve]\neps = [0.5, -1]\n")
    with pytest.raises(RecipeError, match=r"\[attack\] norm: the paper's tables .* set paper = \"none\""):
        parse_recipe(BASE + '[attack]\nnorm = "l2"\n')


def test_unknown_model_gets_close_matches():
    with pytest.raises(RecipeError, match=r"recipes/x.toml: \[backbone\] name: unknown model 'resnet81'.*resnet18"):
        parse_recipe(BASE.replace('"small_cnn"', '"resnet81"'), "recipes/x.toml")


def test_unknown_dataset_and_missing_required_key():
    with pytest.raises(RecipeError, match=r"\[data\] name: unknown dataset 'mnsit'; valid: mnist"):
        parse_recipe(BASE.replace('"synthetic"', '"mnsit"'))
    with pytest.raises(RecipeError, match=r"\[backbone\] name is required"):
        parse_recipe(BASE.replace('name = "small_cnn"', ""))


def test_a_weights_file_that_is_not_one_is_refused_at_check(tmp_path):
    import torch

    recipe = BASE.replace('name = "small_cnn"', 'name = "small_cnn"\nweights = "w.pt"')
    (tmp_path / "w.pt").write_text("not weights")
    with pytest.raises(RecipeError, match=r"\[backbone\] weights: .*w.pt is not a weights file"):
        parse_recipe(recipe, str(tmp_path / "x.toml"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    parse_recipe(recipe, str(tmp_path / "x.toml"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt", _use_new_zipfile_serialization=False)
    parse_recipe(recipe, str(tmp_path / "x.toml"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="x.toml: not valid TOML"):
        parse_recipe("[recipe\nname=", "x.toml")
    with pytest.raises(FileNotFoundError, match="no recipe at"):
        load_recipe(tmp_path / "absent.toml")


def test_cli_error_exits_2_naming_the_file(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text(BASE + "[train]\nepoch = 3\n")
    proc = subprocess.run([sys.executable, "-m", "auxsurgery", "run", str(path), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "Did you mean 'epochs'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("table, message", [
    ('[aux]\nat = "stage1,stage9"', r"\[aux\] at: unknown layer 'stage9' in SmallCNN. Close matches: stage3, stage2"),
    ('[[aux_adversarial]]\nname = "a"\neps = 0.03\nat = ["stage1", "stag2"]',
     r'\[\[aux_adversarial\]\] name = "a" at: unknown layer \'stag2\'.*Close matches: stage2'),
    ('[aux]\nat = "fc"', r"\[aux\] at: attach point 'fc' is in the classifier"),
])
def test_run_validate_refuses_an_attach_point_the_backbone_lacks(tmp_path, table, message):
    """Before anything trains: the backbone is built on the meta device and its graph read."""
    from typer.testing import CliRunner

    from auxsurgery.cli import app

    path = tmp_path / "typo.toml"
    path.write_text(BASE + table + "\n")
    result = CliRunner().invoke(app, ["run", str(path), "--validate"])
    assert result.exit_code == 2 and not (tmp_path / "runs").exists()
    assert re.fullmatch(rf"error: {re.escape(str(path))}: {message}.*\n", result.output, re.DOTALL), result.output
    assert result.output.count("\n") == 1


def test_paper_values_come_from_tables_ii_and_vii():
    assert paper_value("mnist", "Aux Block (all)", "PGD") == 88.2
    assert paper_value("mnist", "Aux Block (all)", "Adp-PGD") == 56.55
    assert paper_value("cifar10", "NA", "Boundary") == 5.4
    assert paper_value("mini-imagenet", "NA", "Boundary") is None
    assert paper_value("mnist", "Aux Block (private)", "Adp-PGD") is None


def test_changed_recipe_is_validated_and_its_text_reproduces_it():
    recipe = parse_recipe(TINY, "tiny.toml")
    assert recipe.changed({"recipe.seed": 0, "attack.n": 12}) is recipe  # no real change
    changed = recipe.changed({"recipe.seed": 4, "attack.budget.apgd_steps": 3, "aux.train.epochs": 2})
    assert (changed["recipe"]["seed"], changed["attack"]["budget"]["apgd_steps"]) == (4, 3)
    assert changed.train_config("aux").epochs == 2 and changed.train_config("undefended").epochs == 1
    assert parse_recipe(changed.text).sections == changed.sections  # readings and curve included
    assert changed.text.startswith("# tiny.toml, changed: recipe.seed = 4")
    with pytest.raises(RecipeError, match=r"tiny.toml: \[attack\]: unknown key 'nn'"):
        recipe.changed({"attack.nn": 3})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    recipe = parse_recipe(TINY, "tiny.toml")
    return recipe, out, experiment.run_recipe(recipe, out)  # device "auto": the CPU here


def test_run_writes_comparison_with_paper_values(tiny_run):
    _, out, report = tiny_run
    for name in ("report.md", "report.json", "accuracy_vs_eps.png", "recipe.toml", "recipe.json",
                 "aux/eval/wide/results.json", "adversarial/eval/narrow/report.md", "undefended/eval/curve/results.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == report
    wide = {row["label"]: row["cells"] for row in report["tables"]["wide"]}
    assert list(wide) == ["NA (undefended)", "Adversarial Training", "Aux Block: vote", "Aux Block: score",
                          "Aux Block: public", "Aux Block: private"]
    assert wide["Aux Block: vote"]["PGD"]["paper"] == 88.2
    assert wide["Aux Block: private"]["PGD"]["paper"] == 89.59
    assert wide["Aux Block: score"]["PGD"]["paper"] is None  # the paper has no score rule
    assert wide["NA (undefended)"]["Adp-PGD"]["paper"] == 21.30
    doc = json.loads((out / "aux/eval/wide/results.json").read_text())
    assert wide["Aux Block: private"]["clean"]["ours"] == pytest.approx(100 * doc["clean"]["rules"]["private"])
    # The narrow reading skipped the unbounded attacks and borrows them from the wide one.
    narrow = {row["label"]: row["cells"] for row in report["tables"]["narrow"]}
    assert narrow["NA (undefended)"]["CW"]["from_reading"] == "wide"
    assert narrow["NA (undefended)"]["PGD"]["from_reading"] is None
    assert [eps for eps, _ in report["curve"]["aux"]["series"]["Adp-PGD (paper's steps)"]] == [0.02, 0.06]
    assert "| Aux Block: vote | " in (out / "report.md").read_text()


def test_report_has_intervals_heads_and_wall_times(tiny_run):
    _, out, report = tiny_run
    wide = {row["label"]: row["cells"] for row in report["tables"]["wide"]}
    clean = wide["Aux Block: vote"]["clean"]
    low, high = clean["interval"]
    assert 0 <= low <= clean["ours"] <= high <= 100 and high - low > 10  # 12 points: a wide interval
    doc = json.loads((out / "aux/eval/wide/results.json").read_text())
    heads = report["heads"]["wide"]
    assert list(heads) == ["clean", "PGD", "Adp-PGD", "worst case"]
    assert heads["clean"] == pytest.approx({h: 100 * a for h, a in doc["clean"]["heads"].items()})
    assert (out / "aux_heads.png").is_file()
    # Every epoch records its wall time; the report sums them per model, and times each evaluation.
    records = [json.loads(line) for line in (out / "aux/train/metrics.jsonl").read_text().splitlines()]
    assert report["train_seconds"]["aux"] == pytest.approx(sum(r["seconds"] for r in records))
    assert report["eval_seconds"]["aux"]["wide"] == doc["timings"]["total_seconds"]
    markdown = (out / "report.md").read_text()
    assert "## The Aux Block model's heads" in markdown and "training wall time (min)" in markdown
    # Clean accuracy on the whole test split, of the very models the run saved.
    test = load_dataset("synthetic", train=False)
    for stage in tiny_run[0].stages():
        model = experiment.trained_model(out, stage, num_classes=len(dataset_classes(test)))
        assert report["test_accuracy"][stage] == {"n": len(test), **evaluate(model, test)}
    assert f"all {len(test)} test images" in markdown
    assert f"{clean['ours']:.1f} ({low:.1f}-{high:.1f})" in markdown


def test_rerun_resumes_instead_of_recomputing(tiny_run, monkeypatch):
    recipe, out, report = tiny_run
    (out / "aux/eval/narrow/results.json").unlink()
    calls = []
    real = experiment.run_suite
    monkeypatch.setattr(experiment, "run_suite", lambda *a, **k: calls.append(k) or real(*a, **k))
    lines = (out / "aux/train/metrics.jsonl").read_text()
    again = experiment.run_recipe(recipe, out, device="cpu")
    assert len(calls) == 1 and calls[0]["eps"] == 0.02  # only the deleted evaluation ran again
    assert (out / "aux/train/metrics.jsonl").read_text() == lines  # no training epoch was redone
    assert again["tables"]["wide"] == report["tables"]["wide"]


def test_a_missing_report_is_rewritten_from_the_evaluation_state(tiny_run):
    recipe, out, report = tiny_run
    folder = out / "aux/eval/narrow"
    results = (folder / "results.json").read_text()
    (folder / "report.md").unlink()
    again = experiment.run_recipe(recipe, out, device="cpu")
    assert (folder / "report.md").exists()
    # Rebuilt from the kept per-batch records: the same numbers (the creation time aside).
    strip = lambda doc: {k: v for k, v in json.loads(doc).items() if k not in ("created", "timings")}  # noqa: E731
    assert strip((folder / "results.json").read_text())["attacks"] == strip(results)["attacks"]
    assert again["tables"] == report["tables"]


def test_other_recipe_into_same_folder_is_refused(tiny_run):
    _, out, _ = tiny_run
    changed = parse_recipe(TINY.replace("epochs = 1", "epochs = 2"), "changed.toml")
    with pytest.raises(RecipeError, match=r"changed.toml: .* different recipe \(changed: train.epochs\)"):
        experiment.run_recipe(changed, out, device="cpu")


def test_change_to_one_stage_is_accepted_once_its_work_is_deleted(tiny_run, tmp_path):
    recipe, out, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = parse_recipe(TINY.replace('at = "stage1,stage2"', 'at = "stage1,stage2"\n[aux.train]\ngrad_clip = 1.0'),
                           "changed.toml")
    with pytest.raises(RecipeError, match=r"changed \(aux.train.grad_clip\).*delete .*copy/aux to redo"):
        experiment._claim_out_dir(changed, copy)
    shutil.rmtree(copy / "aux")
    experiment._claim_out_dir(changed, copy)  # accepted, and recorded
    assert json.loads((copy / "recipe.json").read_text())["aux"]["train"]["grad_clip"] == 1.0


def test_report_pairs_each_attacked_rule_with_the_adversarial_baseline_and_marks_unattacked_rules(tiny_run):
    _, out, report = tiny_run
    gains = {g["label"]: g for g in report["gains"]["wide"]}
    assert set(gains) == {"NA (undefended)", "Aux Block: vote", "Aux Block: score"}  # public, private: not attacked
    aux, base = (json.loads((out / model / "eval/wide/results.json").read_text())["per_sample"]
                 for model in ("aux", "adversarial"))
    assert gains["Aux Block: score"]["worst_case"] == pytest.approx(
        paired_difference_interval(aux["robust"]["score"], base["robust"]["vote"]))
    assert gains["Aux Block: vote"]["clean"] == pytest.approx(
        paired_difference_interval(aux["clean"]["vote"], base["clean"]["vote"]))
    worst = {row["label"]: row["cells"]["worst case"] for row in report["tables"]["wide"]}
    assert worst["Aux Block: public"]["attacked"] is False and worst["Aux Block: vote"]["attacked"] is True
    markdown = (out / "report.md").read_text()
    assert "Against `adversarial`" in markdown and "an upper bound, not a robust accuracy" in markdown
    public = next(line for line in markdown.splitlines() if line.startswith("| Aux Block: public |"))
    assert public.rstrip(" |").split("|")[-1].split("(")[0].strip().endswith("†")


# ---- Aux Block models trained adversarially -----------------------------------------------------------

AUX_ADVERSARIAL = BASE.replace('name = "synthetic"', 'name = "synthetic"\ntrain_subset = 64\nheld_out = 16') + QUICK_TRAIN + """
[aux]
enabled = false
at = "stage1,stage2"
[[aux_adversarial]]
name = "max"
method = "pgd"
objective = "max-head"
eps = 0.03
steps = 1
[[aux_adversarial]]
name = "trades"
method = "trades"
eps = 0.03
steps = 1
head = "default:8"
[aux_adversarial.train]
mode = "full"
[attack]
suites = ["strong"]
n = 8
[attack.budget]
apgd_steps = 2
square_queries = 4
target_classes = 2
probe_steps = 1
[[attack.readings]]
name = "r"
eps = 0.03
"""


def test_aux_adversarial_stages_train_adversarially_and_report_every_rule(tmp_path):
    recipe = parse_recipe(AUX_ADVERSARIAL, "aux-adv.toml")
    assert recipe.stages() == ["undefended", "aux_adversarial_max", "aux_adversarial_trades"]
    report = experiment.run_recipe(recipe, tmp_path / "run")
    labels = [row["label"] for row in report["tables"]["r"]]
    assert labels[:1] == ["NA (undefended)"] and "Aux Block, adversarial max: vote" in labels
    assert "Aux Block, adversarial trades: private" in labels
    for stage, passes in (("undefended", 2), ("aux_adversarial_max", 4), ("aux_adversarial_trades", 7)):
        record = report["training"][stage]
        assert record["passes_per_image"] == passes and record["train_passes"] == 64 * passes
        model = experiment.trained_model(tmp_path / "run", stage, num_classes=10)
        assert hasattr(model, "head_names") == (stage != "undefended")
    # Heads as [aux] says unless the stage says otherwise: the trades stage's differ.
    sizes = {stage: sum(p.numel() for p in experiment.trained_model(tmp_path / "run", stage, 10).parameters())
             for stage in ("aux_adversarial_max", "aux_adversarial_trades")}
    assert sizes["aux_adversarial_trades"] != sizes["aux_adversarial_max"]
    assert "training budget (M image-passes" in (tmp_path / "run" / "report.md").read_text()


def test_a_changed_or_added_aux_adversarial_table_redoes_only_its_own_stage(tmp_path):
    old = parse_recipe(AUX_ADVERSARIAL, "aux-adv.toml")
    tables = tomllib.loads(AUX_ADVERSARIAL)["aux_adversarial"]  # as written (no defaults filled in)
    new = old.changed({"aux_adversarial": [tables[0], dict(tables[1], beta=3.0),
                                           dict(tables[0], name="joint", objective="joint")]})
    changed = experiment._differences(experiment._resolved(old), experiment._resolved(new))
    assert changed == ["aux_adversarial[joint]", "aux_adversarial[trades].beta"]
    assert [experiment._redone_by(key, tmp_path, new.stages()) for key in changed] == [
        [tmp_path / "aux_adversarial_joint"], [tmp_path / "aux_adversarial_trades"]]
    (tmp_path / "aux_adversarial_max").mkdir()
    # [aux] gives the aux_adversarial stages their heads: changing it redoes them too.
    assert experiment._redone_by("aux.at", tmp_path, new.stages()) == [tmp_path / "aux", tmp_path / "aux_adversarial_max"]


def test_report_rows_add_the_rules_a_recipe_attacked_beyond_the_papers():
    """[attack] rules = ["vote", "crossmax"]: each Aux Block model gets a crossmax row, which the paper lacks."""
    from auxsurgery.studies.comparison import _rows

    reading = {"settings": {"rules": ["vote", "crossmax"]}}
    documents = {"undefended": {"wide": {"settings": {"rules": ["vote"]}}}, "aux": {"wide": reading},
                 "aux_adversarial_joint": {"wide": reading}}
    labels = [row[0] for row in _rows(documents)]
    assert labels == ["NA (undefended)", "Aux Block: vote", "Aux Block: score", "Aux Block: public",
                      "Aux Block: private", "Aux Block: crossmax", *(f"Aux Block, adversarial joint: {rule}" for rule in
                                                                     ("vote", "score", "public", "private", "crossmax"))]
    assert ("Aux Block: crossmax", "aux", "crossmax", None) in _rows(documents)
