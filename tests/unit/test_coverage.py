"""agent.coverage: the hint that the references, not the line, look like the problem."""

from agent.coverage import API_FIX, CoverageTally, hint_line


def test_hint_line_needs_more_than_half_of_at_least_five():
    assert hint_line(5, 3).startswith("hint: 3 of 5 judged images are anomalous.")
    assert hint_line(6, 3) is None  # half is not most
    assert hint_line(4, 4) is None  # too few to say
    assert "POST /v1/runs/{run_id}/feedback" in hint_line(5, 5, API_FIX)


def test_tally_counts_per_key_and_forgets_confirmed_defects():
    tally = CoverageTally(window=6, max_keys=2)
    a, b = ("nut", "set1"), ("nut", "memory")
    for i in range(4):
        assert tally.add(a, f"r{i}", "ok", "anomalous") is None
    assert tally.add(a, "failed", "error", None) is None  # a failure is not judged
    assert tally.add(b, "x", "ok", "anomalous") is None  # another key
    assert tally.add(a, "r4", "ok", "anomalous").startswith("hint: 5 of 5 recent verdicts")
    tally.confirm("r0", "anomalous", "ex0")
    tally.confirm("r1", "anomalous")
    assert tally.hint(a).startswith("hint: 3 of 5")
    tally.undo("ex0")  # the feedback on r0 undone: r0 counts as flagged again
    assert tally.hint(a).startswith("hint: 4 of 5")
    tally.confirm("r0", "anomalous", "ex0")
    assert tally.add(a, "r5", "ok", "normal") is None  # 3 of 6
    tally.confirm("r1", "normal")  # the label taken back
    assert tally.hint(a).startswith("hint: 4 of 6")
    for i in range(6, 12):  # the window keeps the last 6
        tally.add(a, f"r{i}", "ok", "normal")
    assert tally.hint(a) is None
    tally.add(("other", "none"), "y", "ok", "normal")  # a third key drops the least recently used (b)
    assert b not in tally._recent and a in tally._recent
