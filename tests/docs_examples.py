"""Runs the documentation's examples: every ```bash and ```python block of README.md and docs/**/*.md.

sybil (a maintained doc-example runner) finds the blocks and runs them in document order, one pytest item
each; the blocks of a document share one Python namespace and one sandbox folder, so a later block uses what
an earlier one made (a model trained, a weights file saved). The rules, documented for writers in
docs/contributing.md ("The docs run in the tests"):

- Every command and snippet runs as written, in the document's sandbox (its working folder), except for the
  scale-down rules of :data:`SCALE` (fewer epochs, points and attack iterations; the same code paths).
- ``auxsurgery ...`` lines run in the test process through Typer's CliRunner (the app the console script runs;
  it saves the seconds of a new interpreter per command); any other line, or one with pipes and redirections,
  runs under ``bash`` with an ``auxsurgery`` on PATH that runs this checkout.
- ``pip install ...`` is not run: the test checks that the environment has what it installs (``.ci/run`` runs
  the same installs for real). ``python -m pytest -q`` is not run either (the suite cannot run itself): the test
  checks that it is the command ``.ci/run`` runs.
- ``<!-- docs-test: parse-only -->`` before a block: its commands take minutes to hours (they made the
  committed results linked beside them); each is parsed (every option exists and takes its value) but not run.
- ``<!-- skip: next "reason" -->`` (sybil's own) marks a block that cannot run here, such as a command for two
  machines; keep these rare.
- ``../shared/data`` is the real data (``$AUXSURGERY_DATA``); a block that needs it is skipped where it is absent.
"""
from __future__ import annotations

import contextlib
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from sybil import Example, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUXSURGERY_DATA", REPO.parent / "shared" / "data"))

# (pattern, replacement) applied in order to every command and snippet before it runs. Keep this list short and
# the docs' commands real: it shrinks how long they run, never what they do.
SCALE: list[tuple[str, str]] = [
    # Every evaluation and the demo at the smoke-test budget (all attacks run, none seriously).
    (r"^((?:torchrun .* -m )?auxsurgery (?:demo|attack|defend)\b(?!.*--quick).*)$", r"\1 --quick"),
    # Few points, epochs and training images.
    (r"(--points) \d+", r"\1 16"),
    (r"^(auxsurgery (?:attack|defend|place)\b(?!.*--points ).*)$", r"\1 --points 16"),
    (r"(--epochs) \d+", r"\1 1"),
    (r"^((?:torchrun .* -m )?auxsurgery (?:train|place)\b(?!.*--epochs ).*)$", r"\1 --epochs 1"),
    (r"(--train-subset) \d+", r"\1 512"),
    (r"^((?:torchrun .* -m )?auxsurgery train\b(?!.*--train-subset ).*)$", r"\1 --train-subset 512 --val-subset 128"),
    (r"^(auxsurgery (?:place|defend)\b(?!.*--train-subset ).*)$", r"\1 --train-subset 512"),
    (r"^(auxsurgery export .*--check (?!.*--points ).*)$", r"\1 --points 16"),
    # torchrun: 2 gloo processes on a free port of this machine.
    (r"torchrun --nproc_per_node \d+", "torchrun --standalone --nproc_per_node 2"),
    # Python snippets: the same, as keyword arguments.
    (r"\bn=\d+", "n=16"),
    (r"\bepochs=\d+", "epochs=1"),
    (r"(run_suite\((?!.*budget=).*)\)$", r"\1, budget=__import__('auxsurgery').Budget.quick())"),
]


def scaled(text: str) -> str:
    """``text`` after the :data:`SCALE` rules, line by line."""
    lines = []
    for line in text.splitlines():
        for pattern, replacement in SCALE:
            line = re.sub(pattern, replacement, line)
        lines.append(line)
    return "\n".join(lines)


def commands(source: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", source)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


# ---- the sandbox -------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    """A document's folders: ``work`` (its working folder, with ``recipes`` of this checkout and the real data
    at ``../shared/data``) and ``bin`` (an ``auxsurgery`` that runs this checkout)."""

    work: Path
    bin: Path

    @classmethod
    def create(cls, root: Path) -> "Sandbox":
        work, bin_dir = root / "work", root / "bin"
        work.mkdir()
        bin_dir.mkdir()
        (work / "recipes").symlink_to(REPO / "recipes")
        (root / "shared").mkdir()
        if DATA.is_dir():
            (root / "shared" / "data").symlink_to(DATA)
        shim = bin_dir / "auxsurgery"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m auxsurgery "$@"\n')
        shim.chmod(0o755)
        return cls(work, bin_dir)

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.bin), os.environ.get("PATH", "")])
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PATH": path, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}


def _needs_data(text: str) -> None:
    if "../shared/data" in text and not DATA.is_dir():
        pytest.skip(f"the real data is not at {DATA} (set AUXSURGERY_DATA)")


# ---- evaluators --------------------------------------------------------------------------------------------


def _ci_commands() -> list[str]:
    return commands((REPO / ".ci" / "run").read_text())


def _check_installed(command: str) -> None:
    """What ``pip install ARGS`` would install is installed (the test does not install anything)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for arg in shlex.split(command)[2:]:
        if arg.startswith("-") and arg != "-e":
            raise AssertionError(f"{command!r}: the docs' pip commands take no option but -e")
        if arg == "-e":
            continue
        if arg.startswith("."):  # this project, with extras: ".[test]"
            extras = re.findall(r"\w+", arg.partition("[")[2])
            requirements = [Requirement("auxsurgery")]
            for extra in extras:
                assert extra in project["optional-dependencies"], f"{command!r}: no extra {extra!r}"
                requirements += map(Requirement, project["optional-dependencies"][extra])
        else:
            requirements = [Requirement(arg)]
        for requirement in requirements:
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                if arg.startswith(".[") and "test" not in arg:  # an optional extra beyond the tests' own
                    pytest.skip(f"{command!r}: {requirement.name} is not installed here")
                raise AssertionError(f"{command!r}: {requirement.name} is not installed") from None
            assert requirement.specifier.contains(version, prereleases=True), \
                f"{command!r}: {requirement.name} {version} installed, {requirement.specifier} asked"


def _run_in_process(arguments: list[str]) -> None:
    from typer.testing import CliRunner

    from auxsurgery.cli import app

    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output[-4000:]}"


def _run_shell(command: str, sandbox: Sandbox) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=sandbox.work,
                          env=sandbox.environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _parse_only(command: str) -> None:
    """Parse ``command``'s arguments as its program would, without running it."""
    words = shlex.split(command)
    while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes (thread counts)
        words.pop(0)
    if words[:1] == ["auxsurgery"]:
        import typer

        from auxsurgery.cli import app

        group = typer.main.get_command(app)
        context = group.make_context("auxsurgery", words[1:2], resilient_parsing=False)
        name, subcommand, rest = group.resolve_command(context, words[1:2])
        with subcommand.make_context(name, words[2:], parent=context):
            return
    if words[:1] == ["python"] and words[1].startswith("benchmarks/"):
        _parse_script_arguments(REPO / words[1], words[2:])
        return
    raise AssertionError(f"parse-only knows auxsurgery and python benchmarks/...: {command!r}")


class _Parsed(Exception):
    pass


def _parse_script_arguments(script: Path, arguments: list[str]) -> None:
    """Run ``script`` up to its argument parsing (argparse) and stop there."""
    import argparse

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, arguments, namespace)
        raise _Parsed

    argv = sys.argv
    sys.argv = [str(script), *arguments]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
            patch.syspath_prepend(str(script.parent))  # as ``python SCRIPT`` does: its folder's modules import
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        return
    finally:
        sys.argv = argv
    raise AssertionError(f"{script.name} finished without parsing its arguments")


@contextlib.contextmanager
def _inside(sandbox: Sandbox):
    here = Path.cwd()
    os.chdir(sandbox.work)
    try:
        yield
    finally:
        os.chdir(here)


def evaluate_shell(example: Example) -> None:
    sandbox: Sandbox = example.namespace["docs_sandbox"]
    parse_only = example.namespace.pop("_docs_parse_only", False)
    _needs_data(example.parsed)
    for command in commands(example.parsed):
        if parse_only:
            _parse_only(command)
            continue
        for part in map(scaled, re.split(r"\s+&&\s+", command)):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                _check_installed(part)
            elif part == "python -m pytest -q":
                assert part in _ci_commands(), ".ci/run must run the README's test command"
            elif words[0] == "auxsurgery" and not re.search(r"[|<>;&$`]", part):
                with _inside(sandbox):
                    _run_in_process(words[1:])
            else:
                _run_shell(part, sandbox)


def evaluate_python(example: Example) -> None:
    sandbox: Sandbox = example.namespace["docs_sandbox"]
    _needs_data(example.parsed)
    # Blank lines before the code keep the document's line numbers in tracebacks.
    code = compile("\n" * example.line + scaled(example.parsed), example.path, "exec")
    with _inside(sandbox):
        exec(code, example.namespace)


def _parse_only_directive(example: Example) -> None:
    example.namespace["_docs_parse_only"] = True


class DirectiveParser:
    """``<!-- docs-test: parse-only -->``: the next block's commands are parsed, not run."""

    def __init__(self):
        self.lexer = DirectiveInHTMLCommentLexer(directive="docs-test")

    def __call__(self, document):
        for lexed in self.lexer(document):
            argument = lexed.lexemes["arguments"].strip()
            if argument != "parse-only":
                raise ValueError(f"{document.path}: unknown docs-test directive {argument!r}")
            yield Region(lexed.start, lexed.end, argument, _parse_only_directive)


def sybil() -> Sybil:
    """The Sybil that collects README.md and docs/**/*.md (used by the repository's conftest.py)."""
    return Sybil(
        parsers=[CodeBlockParser("bash", evaluate_shell), CodeBlockParser("python", evaluate_python),
                 DirectiveParser(), SkipParser()],
        patterns=["README.md", "docs/*.md", "docs/**/*.md"],
        excludes=["docs/benchmarks/**", "docs/recipes/**"],
        path=str(REPO),
        fixtures=["docs_sandbox"],
    )
