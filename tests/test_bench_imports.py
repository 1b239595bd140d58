"""Every benchmark and fitting script in bench/ imports against the current package layout.

The benches run by hand (their numbers are in the README), not in CI, so a moved module
breaks them silently: bench/fit_rephrase.py still imported `selflearn.dstc2` for a day after
the module moved to selflearn.evaluation. Importing each one (their work sits under
`if __name__ == "__main__"`) catches that in the fast tier."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_the_bench_folder_is_found():
    assert len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name):
    importlib.import_module(f"bench.{name}")
