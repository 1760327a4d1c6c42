"""The documentation's examples (README.md, docs/**/*.md) run as tests: see tests/docs_examples.py."""
import pytest

from tests.docs_examples import Sandbox, sybil

pytest_collect_file = sybil().pytest()


@pytest.fixture(scope="module")
def docs_sandbox(tmp_path_factory) -> Sandbox:
    """One working folder per document, shared by its blocks in order."""
    return Sandbox.create(tmp_path_factory.mktemp("docs"))
