"""Reports: tables (terminal, markdown, deltas) and report.html with pictures that exist."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from agent.errors import UserInputError
from evals.datasets import load_dataset
from evals.report import load_run, markdown_table, terminal_table, write_report
from evals.runner import EvalSpec, evaluate
from tests.eval_helpers import BrightnessDetector, make_folder_tree


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = make_folder_tree(tmp / "ds")
    cats = load_dataset(root)
    a, _, _ = evaluate(BrightnessDetector(map_dir=tmp / "maps"), cats, EvalSpec(shots=1), tmp / "run_a",
                       {"backend": "fake"}, {"root": str(root)}, progress=False)
    b, _, _ = evaluate(BrightnessDetector(threshold=0.2), cats, EvalSpec(shots=1), tmp / "run_b",
                       {"backend": "fake", "threshold": 0.2}, {"root": str(root)}, progress=False)
    return a.root, b.root


def test_report_html_has_pictures_with_relative_paths(two_runs):
    run_a, _ = two_runs
    html_path = write_report(run_a, top_k=2)
    html = html_path.read_text()
    parser = _Imgs()
    parser.feed(html)
    assert any(s.startswith("plots/roc_") for s in parser.srcs)
    overlays = [s for s in parser.srcs if s.startswith("overlays/")]
    assert len(overlays) == 2 * 2 * 2  # 2 categories x (2 FPs + 2 FNs)
    for src in parser.srcs:
        assert not src.startswith("/")  # relative: the run directory can be moved or zipped
        with Image.open(run_a / src) as im:
            assert im.size[0] > 0
    assert "brightness" in html and "mean " in html  # the evidence and the explanation are shown
    assert (run_a / "report.md").read_text().split("## Operating points")[0].count("| alpha |") == 1


def test_overlay_shows_the_map(two_runs):
    run_a, _ = two_runs
    write_report(run_a, top_k=1)
    fn = sorted((run_a / "overlays" / "alpha").glob("fn-*.png"))[0]
    with Image.open(fn) as im:
        rgb = im.convert("RGB")
        assert max(rgb.size) >= 128  # tiny images are enlarged
        colours = set(rgb.get_flattened_data()) if hasattr(rgb, "get_flattened_data") else set(rgb.getdata())
    assert len(colours) > 20  # a heat map, not a copy of a grey image
    assert (255, 0, 0) in colours and (0, 255, 0) in colours  # predicted box, ground-truth outline


def test_compare_shows_deltas(two_runs):
    run_a, run_b = two_runs
    runs = [load_run(run_a), load_run(run_b)]
    md = markdown_table(runs)
    acc_a = runs[0].row("alpha")["accuracy"]
    acc_b = runs[1].row("alpha")["accuracy"]
    assert f"{acc_b:.3f} ({acc_b - acc_a:+.3f})" in md
    assert re.search(r"\| mean \| run_b \|", md)
    html = write_report(run_a, compare=[run_b]).read_text()
    assert "run_b" in html and "(+" in html or "(-" in html
    table = terminal_table(runs)
    assert table.row_count == 2 * 3


def test_not_a_run_dir(tmp_path):
    with pytest.raises(UserInputError, match="not a run directory"):
        load_run(tmp_path)


def test_report_cli(two_runs, capsys):
    from agent.cli import main

    run_a, run_b = two_runs
    assert main(["report", str(run_a), "--compare", str(run_b), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| category | run |" in out and "run_b" in out
