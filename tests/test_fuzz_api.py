"""Schemathesis against the live OpenAPI schema: every endpoint, no 500, no hang."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import start_server, stop_server


def test_fuzz_api_every_operation_never_500(tmp_path):
    srv = start_server(tmp_path / "data")
    try:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        headers = {"Authorization": f"Bearer {srv.token}"}  # reach past auth into handlers
        seen, calls = [], []
        for result in schema.get_all_operations():
            op = result.ok()
            seen.append(f"{op.method.upper()} {op.path}")

            @given(op.as_strategy())
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                r = case.call_and_validate(base_url=srv.url, checks=[not_a_server_error],
                                           headers=headers, timeout=30)
                calls.append(r.status_code)

            fuzz()
        assert "POST /sessions" in seen and "PUT /sessions/{sid}/limits" in seen
        assert len(seen) >= 15, seen
        assert len(calls) >= 10 * len(seen), len(calls)
        assert all(code < 500 for code in calls)
    finally:
        stop_server(srv)
