"""A fuzz run of the whole OpenAPI document against a live stack: no 5xx, answers as documented.

Every operation of ``/openapi.json`` gets a few generated requests, valid ones
and invalid ones (schemathesis), with an API key. Each answer must not be a
5xx, must have a documented status, content type and headers, must fit its
documented schema, an invalid request must be refused (4xx), and every 4xx
must be JSON ``{"error": {"code", "message"}}``. The
examples per operation are few, so the run stays within a couple of minutes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.stack import Stack

pytestmark = pytest.mark.slow

API_KEY = "sb_fuzz_key_0123456789"
EXAMPLES = 12  # per operation and generation mode


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fuzz")
    env = {"SOULBOX_GATEWAY__API_KEYS": f'["{API_KEY}"]', "SOULBOX_TENANT": "fuzz"}
    stack = Stack(root, workers=1, env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def error_is_json(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 4xx says what is wrong as ``{"error": {"code": <stable code>, "message": ...}}``."""
    if not 400 <= response.status_code < 500:
        return None
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str), body
    return True


def refuses_invalid_data(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Schemathesis's negative-data check, with a 413 (a body over the limit) counted as a refusal too."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    refuses_invalid_data,  # invalid input is refused, not half-accepted
]


def fuzz(operation: APIOperation, mode: GenerationMode, url: str, failures: dict[str, str]) -> None:
    """Up to ``EXAMPLES`` generated calls of ``operation``; the first failure is kept in ``failures``."""
    label = f"{operation.label} ({mode.value})"

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        if label in failures:
            return  # one failure per operation is enough to report
        try:
            case.call_and_validate(
                base_url=url,
                headers={"X-API-KEY": API_KEY},
                checks=CHECKS,
                additional_checks=[error_is_json],
                timeout=30,
            )
        except (Exception, FailureGroup) as exc:  # every kind of check failure: collected, reported together
            failures[label] = f"{exc}\n{case.as_curl_command({'X-API-KEY': API_KEY})}"[:3000]

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in an operation without inputs


@pytest.mark.timeout(600)
def test_every_operation_answers_as_documented(fuzz_stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json", timeout=10)
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode, fuzz_stack.url, failures)
    assert operations > 30
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
