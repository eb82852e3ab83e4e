"""A bounded fuzz of the server's OpenAPI schema with schemathesis (loopback only): no request may get a
5xx. Every operation gets `EXAMPLES` generated cases (a few hundred in all, well under a minute)."""

from __future__ import annotations

import pytest

from tests.server_fixtures import ServerThread, serve_config, serve_settings

EXAMPLES = 12


def test_no_server_errors_on_fuzzed_requests(tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    from agent.server import create_app

    home = tmp_path / "home"
    app = create_app(serve_settings(home, max_upload_mb=2.0), serve_config(home))
    with ServerThread(app) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        calls: list[tuple[str, int]] = []
        failures: list[str] = []
        def fuzz(operation):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case):
                response = case.call(base_url=server.url, timeout=60)
                calls.append((operation.label, response.status_code))
                if response.status_code >= 500:
                    failures.append(f"{operation.label}: {response.status_code} {response.text[:300]}")

            run()

        for result in schema.get_all_operations():
            fuzz(result.ok())
    print(f"\n{len(calls)} fuzzed requests; statuses: {sorted({s for _, s in calls})}")
    assert 100 <= len(calls) <= 400, len(calls)
    assert not failures, "\n".join(failures[:10])
    labels = {label for label, _ in calls}
    assert "POST /v1/detect" in labels and "POST /v1/chat/completions" in labels
