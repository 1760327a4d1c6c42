"""The documentation site: `mkdocs build --strict` passes, and the API reference covers the whole public API,
each item with a docstring. (The docs' commands and snippets themselves run through conftest.py.)"""
import importlib.util
import inspect
import os
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
