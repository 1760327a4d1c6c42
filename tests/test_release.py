"""The release: one version, `auxsurgery --version`, results stamped with version and commit, and a wheel that
installs into a fresh environment and runs the demo there."""
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from typer.testing import CliRunner

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import auxsurgery
from auxsurgery import provenance
from auxsurgery.cli import app
from auxsurgery.version import __version__

REPO = Path(__file__).resolve().parents[1]


def test_the_version_lives_in_version_py_alone():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "auxsurgery.version.__version__"}
    assert auxsurgery.__version__ == __version__ == "0.2.0"
    assert f"## [{__version__}]" in (REPO / "CHANGELOG.md").read_text()


def test_version_option_prints_the_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"auxsurgery {__version__}\n"


def test_results_are_stamped_with_version_and_commit(monkeypatch):
    stamp = provenance.release()
    assert stamp["auxsurgery_version"] == __version__
    if shutil.which("git") and (REPO / ".git").exists():
        assert stamp["auxsurgery_commit"].split("+")[0].isalnum()
    # Outside a git checkout (an installed wheel, or no git at all) the commit is "unknown", never an error.
    monkeypatch.setattr(provenance, "_SOURCE_ROOT", Path("/"))
    provenance.source_commit.cache_clear()
    try:
        assert provenance.release()["auxsurgery_commit"] == "unknown"
        monkeypatch.setenv("PATH", "")  # no git executable
        provenance.source_commit.cache_clear()
        assert provenance.source_commit() is None
    finally:
        provenance.source_commit.cache_clear()


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    # --no-isolation: build with the installed setuptools, so the test needs no network.
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    wheel, = dist.glob(f"auxsurgery-{__version__}-py3-none-any.whl")
    assert (dist / f"auxsurgery-{__version__}.tar.gz").is_file()

    # torch and the other dependencies come from the site-packages of the interpreter running the tests; the
    # package from the wheel. Not system_site_packages=True: in a venv that gives the *base* interpreter's
    # packages, not this venv's. A .pth file appends this interpreter's folders after the new venv's own, and
    # their .pth files are not read, so an editable install of the checkout stays out of it. Written after the
    # install, so pip never sees (nor uninstalls) this interpreter's auxsurgery.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    env_site = subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--force-reinstall", str(wheel)], check=True, capture_output=True, text=True)
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (Path(env_site) / "running-interpreter.pth").write_text("".join(f"{p}\n" for p in ours if Path(p).is_dir()))

    work = tmp_path / "elsewhere"  # not the checkout: nothing may come from the source tree
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}

    def run(*command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    where = run(str(bin_dir / "python"), "-c", "import auxsurgery; print(auxsurgery.__file__)").stdout.strip()
    assert Path(where).resolve().is_relative_to(env_dir.resolve()), where
    assert run(str(bin_dir / "auxsurgery"), "--version").stdout == f"auxsurgery {__version__}\n"
    run(str(bin_dir / "auxsurgery"), "demo", "--quick", "--out", "demo-out")
    assert (work / "demo-out" / "report.md").is_file()
    report = (work / "demo-out" / "undefended" / "eval" / "default" / "results.json").read_text()
    assert f'"auxsurgery_version": "{__version__}"' in report and '"auxsurgery_commit": "unknown"' in report
