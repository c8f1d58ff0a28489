"""Skip a test whose optional prerequisite (Chromium, nibabel, playwright, the real OASIS data) is
missing -- except in CI, where that skip would quietly hide a test that never ran, so it fails.

Strict when BRAINVQ_STRICT=1 (.ci/run sets it) or, if BRAINVQ_STRICT is unset, when CI=true.
An explicit BRAINVQ_STRICT=0 wins over CI=true, so a run without root can still skip."""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def strict() -> bool:
    flag = os.environ.get("BRAINVQ_STRICT", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes")
    return os.environ.get("CI", "").strip().lower() in ("1", "true")


def skip_or_fail(reason: str) -> NoReturn:
    __tracebackhide__ = True  # so pytest reports the caller's line, not this one
    if strict():
        pytest.fail(f"{reason} (strict run: BRAINVQ_STRICT=1 or CI=true, so this fails instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Skip (or, when strict, fail) the test unless condition holds."""
    __tracebackhide__ = True
    if not condition:
        skip_or_fail(reason)


def import_or_skip(name: str, reason: str | None = None) -> ModuleType:
    """pytest.importorskip that fails when strict."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as error:
        problem = f"{name} is not importable: {error}"
    skip_or_fail(reason or problem)  # outside the except: no "during handling" noise in the report
