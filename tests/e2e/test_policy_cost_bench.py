"""evals.bench.policy_cost end to end: a tiny synthetic set judged against the fake vLLM server."""

from __future__ import annotations

from evals.bench.policy_cost import RULES, run


def test_the_bench_runs_against_the_fake_server():
    """The agent's own scores equal the bench's recomputation with agent.fusion (asserted inside `run`)."""
    items, header, rows = run(["fabric"], n_train=3, n_test=4, size=96, seed=0)
    assert len(items) == 4 and len(rows) == len(RULES)
    assert all(i.agent_score >= i.threshold or i.gt == 0 or i.reading < 0.9 for i in items)
