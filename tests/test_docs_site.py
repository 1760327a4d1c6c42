"""The documentation site: `mkdocs build --strict` passes, and the API reference covers the whole public API,
each item with a docstring. (The docs' commands and snippets themselves run through conftest.py.)"""
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import auxsurgery

REPO = Path(__file__).resolve().parents[1]
PUBLIC = [name for name in auxsurgery.__all__ if name != "__version__"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]'; .ci/run installs it)")
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").read_text().count("auxsurgery attack") > 0
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert all(name in api for name in PUBLIC)
    # The results page shows its plots: every image it names is published beside it.
    results = tmp_path / "site" / "results"
    images = re.findall(r'<img[^>]* src="([^"]+\.png)"', (results / "index.html").read_text())
    assert len(images) >= 5 and all((results / src).resolve().is_file() for src in images), images


def test_the_docs_show_plots_instead_of_linking_them():
    pages = [page for page in (REPO / "docs").rglob("*.md") if "benchmarks" not in page.relative_to(REPO).parts[1:2]]
    linked = [(page.name, target) for page in pages
              for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+\.png)\)", page.read_text())]
    assert not linked, f"link a plot as an image, ![what it shows](path): {linked}"
    for page in pages:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} shows {target}, which does not exist"


def test_the_home_page_gives_the_readme_s_answer_to_does_the_defence_hold():
    """The site's front page and the README give the same best answer, row for row."""
    readme = (REPO / "README.md").read_text()
    answer = readme[readme.index("## Does the defence hold?"):]
    readme_rows = {row.split(" | ")[0]: row for row in answer.splitlines() if row.startswith("| ")}
    home = (REPO / "docs" / "index.md").read_text()
    rows = [row for row in home.splitlines() if row.startswith("| ") and not row.startswith("| model")]
    assert any("FGSM on the joint loss" in row for row in rows), "docs/index.md lacks the joint-FGSM model's row"
    for row in rows:
        first = row.split(" | ")[0]
        assert readme_rows[first].startswith(row[:-1]), f"docs/index.md's row {first!r} differs from README.md's"


def test_the_api_reference_lists_every_public_name():
    page = (REPO / "docs" / "reference" / "api.md").read_text()
    for name in PUBLIC:
        obj = getattr(auxsurgery, name)
        assert f"::: {obj.__module__}.{name}\n" in page, f"docs/reference/api.md lacks {name}"


def _public_members(cls):
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, value.fget
        elif inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)):
            yield name, getattr(value, "__func__", value)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_item_has_a_docstring(name):
    obj = getattr(auxsurgery, name)
    assert inspect.getdoc(obj), f"auxsurgery.{name} has no docstring"
    if inspect.isclass(obj):
        undocumented = [member for member, function in _public_members(obj) if not function.__doc__]
        assert not undocumented, f"auxsurgery.{name}: {undocumented} have no docstring"
