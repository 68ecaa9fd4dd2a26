"""Property-based tests of the live app against its own OpenAPI document (schemathesis): every
operation, with generated valid and invalid inputs, must never answer 5xx, and every answer
must match the documented status codes, content types and schemas (the one error body
included). Path parameters naming an instance are pointed at a real instance of the tenant, so
sends and updates go deep into the accept path instead of stopping at 404."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from tests.gateway.conftest import ADMIN, TenantHandle
from workers.gateway import build_api

EXAMPLES = 30  # per operation: keeps the whole run around a minute
# Not checked: that every schema-valid request is accepted. The schema documents shapes and
# limits; the accept path refines them with precise codes (a well-formed string that is not a
# dialable number is `invalid_phone`, whitespace-only text is `empty_message`), on purpose.

# The document is the app's own (build_api makes the same routes without a runtime); requests
# go over HTTP to the test run's app served by uvicorn (`live_url`).
schema = schemathesis.openapi.from_dict(build_api().openapi())
# Unknown query parameters and headers are ignored, as HTTP intends (proxies add headers), so an
# extra one is not "schema-violating data" the API must refuse.
schema.config.generation.update(allow_extra_parameters=False)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_matches_its_schema(
    case: Any, client: TestClient, live_url: str, tenant: TenantHandle
) -> None:
    path = case.meta.components.get(ParameterLocation.PATH) if case.meta else None
    # Only a well-formed generated id is swapped for the real one: replacing a deliberately
    # malformed id (negative mode) would turn the case into a valid request.
    if "instance_id" in (case.path_parameters or {}) and (path is None or path.mode.is_positive):
        case.path_parameters["instance_id"] = tenant.instance_id
    admin = case.path.startswith("/v1/tenants")
    case.call_and_validate(
        headers=ADMIN if admin else tenant.headers,
        base_url=live_url,
        excluded_checks=[positive_data_acceptance],
    )


def test_parameters_are_documented_without_a_null_branch() -> None:
    # A query string, header or path cannot carry null; schemathesis once turned the null branch
    # FastAPI writes into `?phone_number=true` (a one-item array) and called the 200 a bug.
    document = build_api().openapi()
    optional = 0
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                assert "null" not in str(parameter["schema"]), parameter
                optional += not parameter.get("required", False)
    assert optional > 10  # the check saw the optional parameters, where the branch would be
