"""Makes the float64 numpy reference (reference.py, next to this file) importable by the tests
in this folder as ``agileir_tests_reference`` (a unique module name, so it cannot collide with
another test folder's helpers), and the ``count_calls`` fixture."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_NAME = "agileir_tests_reference"


def _load_reference():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    path = pathlib.Path(__file__).resolve().parent / "reference.py"
    spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


_load_reference()


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(module, name)`` wraps ``module.name`` so each call is recorded (the real one
    still runs) and returns the list the calls are appended to: which fast path a forward took."""

    def install(module, name: str) -> list[int]:
        calls: list[int] = []
        real = getattr(module, name)

        def counted(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
        return calls

    return install
