"""Fixtures of the host tests: ``run_gloo`` (see ``gloo_helpers.py``)."""
import pytest

from gloo_helpers import run_gloo_processes


@pytest.fixture
def run_gloo():
    return run_gloo_processes
