"""A property-based fuzz of the API from its own OpenAPI schema: no 500, no schema violation.

The schema is loaded when the test runs, from a fixture, not when this file is imported: a
schema that cannot be loaded (a settings or database problem) then fails this one test with
the reason, instead of aborting the collection of the whole suite. Each API operation is a
subtest of it.
"""

import os

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from activity.log import Actor
from boards import services
from boards.tokens import token_create
from tests.conftest import make_card, make_user


@pytest.fixture
def api_schema(transactional_db):
    """The API's own schema, read through the WSGI application as a client would."""
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())


# schemathesis 4.32's from_fixture reads and renames `item._nodeid` (to put each operation
# in the report), which pytest 9.2 no longer has: read the node id, ignore the renaming.
if not hasattr(pytest.Function, "_nodeid"):
    _node_id = property(lambda item: item.nodeid, lambda item, _: None)
    pytest.Function._nodeid = _node_id  # type: ignore[attr-defined]

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def bearer(transactional_db) -> dict[str, str]:
    """A token for a user with a real board, so generated requests reach real code.

    Committed data (transactional_db): the WSGI app closes its connection after each
    request, which a test wrapped in a transaction would not survive.
    """
    user = make_user("fuzzer")
    board = services.board_create(actor=Actor(user=user), name="Payments", key="PAY")
    make_card(board, title="Fuzz me", by=user)
    _, secret = token_create(actor=Actor(user=user), user=user, name="fuzz")
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def unthrottled(settings) -> None:
    """No rate limit while fuzzing, set once for the whole run: each assignment to `settings`
    stacks one more override, and one per example stacks hundreds, past Python's recursion
    limit when teardown reads a setting through them all."""
    settings.API_RATE_LIMIT_PER_MINUTE = 0


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_honours_its_schema_for_any_input(case, bearer, unthrottled):
    # Every check but two. Negative query-string cases (objects, nulls) serialise into keys
    # and values a query string cannot tell apart from absent or valid ones; and a request
    # that fits the schema may still be refused for what it says (an unknown card, a
    # date-time that leaves the calendar when turned into UTC).
    case.call_and_validate(
        headers=bearer, excluded_checks=[negative_data_rejection, positive_data_acceptance]
    )
