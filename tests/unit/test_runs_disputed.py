"""GET /v1/runs?disputed=1 lists the verdicts whose model disagreed with the measured evidence (issue 22)."""

from __future__ import annotations

import json
import types

from fastapi import FastAPI
from fastapi.testclient import TestClient

from agent.server.routes_detect import router
from agent.server.runs import RunStore


def _store(tmp_path) -> tuple[RunStore, dict[str, bool]]:
    store = RunStore(tmp_path)
    runs = {}
    for i, disputed in enumerate([True, False, True, False]):
        run_id, _ = store.new_run(b"x", ".png", {})
        record = {"run_id": run_id, "image": f"img{i}.png", "status": "ok", "pred_label": "anomalous",
                  "pred_score": 0.8, "threshold": 0.5, "disputed": disputed, "policy": "evidence-stands"}
        (store.folder(run_id) / "record.json").write_text(json.dumps(record))
        runs[run_id] = disputed
    return store, runs


def test_recent_filters_disputed_runs(tmp_path):
    store, runs = _store(tmp_path)
    assert {r["run_id"] for r in store.recent(20, disputed=True)} == {k for k, v in runs.items() if v}
    assert {r["run_id"] for r in store.recent(20, disputed=False)} == {k for k, v in runs.items() if not v}
    assert len(store.recent(20)) == 4
    assert len(store.recent(1, disputed=True)) == 1
    assert all(r["policy"] == "evidence-stands" and "disputed" in r for r in store.recent(20))


def test_the_runs_route_takes_disputed_as_a_query_parameter(tmp_path):
    store, runs = _store(tmp_path)
    app = FastAPI()
    app.include_router(router)
    app.state.server = types.SimpleNamespace(runs=store)
    with TestClient(app) as client:
        listed = client.get("/v1/runs", params={"disputed": 1}).json()["runs"]
        rest = client.get("/v1/runs?disputed=0").json()["runs"]
        every = client.get("/v1/runs").json()["runs"]
    assert sorted(r["run_id"] for r in listed) == sorted(k for k, v in runs.items() if v)
    assert all(r["disputed"] for r in listed) and not any(r["disputed"] for r in rest)
    assert len(every) == 4
