"""`make bench` runs `evals.bench.all`: every benchmark it lists must exist and take an argv."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import evals.bench
from evals.bench.all import BENCHES


def test_make_bench_runs_the_all_module():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert re.search(r"^bench:.*\n\t.*-m evals\.bench\.all", makefile, re.M)


def test_every_listed_benchmark_has_a_main_taking_argv():
    for name, _, _ in BENCHES:
        module = importlib.import_module(f"evals.bench.{name}")
        assert "argv" in inspect.signature(module.main).parameters, name


def test_no_benchmark_module_is_left_out():
    modules = {m.name for m in pkgutil.iter_modules(evals.bench.__path__)} - {"all"}
    assert modules == {name for name, _, _ in BENCHES}
