"""The examples written in docstrings (`>>>`) run and give what they say."""

import doctest
import importlib

import pytest

from tests.test_imports import all_modules

MODULES = [m for m in all_modules() if m != "lmforge.__main__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"


def test_some_modules_have_examples():
    assert sum(doctest.testmod(importlib.import_module(m), report=False).attempted for m in MODULES) >= 9
