"""Incidents and rollbacks through the API: each is one event, refused clearly when it cannot
be, and named the same way everywhere ("bob via token bob-ci")."""

import pytest

from activity.describe import event_actor, event_describe
from activity.events import EventKind
from activity.models import Event
from boards import services
from tests.api.test_api import Api, assert_problem, token_for
from tests.conftest import as_actor, make_card

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(board, bob):
    return Api(token_for(bob))


def deployment(api, board, **fields):
    card = make_card(board, title="Ship it")
    body = {"board": "PAY", "version": "1.0", "environment": "production", "status": "success"}
    response = api.post("/deployments", body | {"cards": [card.ref]} | fields)
    assert response.status_code == 201, response.content
    return response.json()


def test_an_incident_opens_names_its_cause_and_is_resolved_by_a_fix(api, board):
    cause = deployment(api, board)
    opened = api.post(
        "/incidents",
        {
            "board": "PAY",
            "title": "Checkout down",
            "started_at": "2026-11-02T10:00:00Z",
            "caused_by": cause["id"],
        },
    )
    assert opened.status_code == 201, opened.content
    incident = opened.json()
    assert incident | {"id": 0} == {
        "id": 0,
        "board": "PAY",
        "title": "Checkout down",
        "status": "open",
        "started_at": "2026-11-02T10:00:00Z",
        "caused_by": cause["id"],
        "resolved_at": None,
        "fixed_by": None,
    }
    fix = deployment(api, board, version="1.0.1", hotfix=True, fixes_incidents=[incident["id"]])
    assert fix["hotfix"] is True and fix["fixes_incidents"] == [incident["id"]]
    resolved = api.patch(
        f"/incidents/{incident['id']}",
        {"status": "resolved", "resolved_at": "2026-11-02T11:30:00Z", "fixed_by": fix["id"]},
    )
    assert resolved.status_code == 200, resolved.content
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["fixed_by"] == fix["id"]
    again = api.patch(f"/incidents/{incident['id']}", {"status": "resolved"})
    assert_problem(again, 409, "already resolved")
    described = [
        (event_actor(e), event_describe(e))
        for e in Event.objects.filter(
            kind__in=[EventKind.INCIDENT_OPENED, EventKind.INCIDENT_RESOLVED]
        ).order_by("pk")
    ]
    assert described == [
        (
            "bob via token bob-ci",
            f"opened the incident “Checkout down”, caused by deployment #{cause['id']}",
        ),
        (
            "bob via token bob-ci",
            f"resolved the incident “Checkout down” with deployment #{fix['id']}",
        ),
    ]


def test_incidents_and_deployments_named_must_be_the_boards_own(api, board, alice, bob):
    other = services.board_create(actor=as_actor(alice), name="Other", key="OTH")
    services.membership_set(actor=as_actor(alice), board_id=other.pk, user_id=bob.pk, role="editor")
    elsewhere = services.deployment_record(
        actor=as_actor(bob),
        board_id=other.pk,
        version="9",
        environment="production",
        status="success",
        card_numbers=[],
    ).event
    refused = api.post("/incidents", {"board": "PAY", "title": "x", "caused_by": elsewhere.pk})
    assert_problem(refused, 422, f"PAY has no deployment {elsewhere.pk}")
    unknown = api.post(
        "/deployments",
        {
            "board": "PAY",
            "version": "2",
            "environment": "production",
            "status": "success",
            "fixes_incidents": [123456],
        },
    )
    assert_problem(unknown, 422, "PAY has no incident 123456")
    assert_problem(api.patch("/incidents/123456", {"status": "resolved"}), 404)
    assert_problem(api.patch("/incidents/99999999999999999999", {"status": "resolved"}), 404)
    early = api.post(
        "/incidents", {"board": "PAY", "title": "x", "started_at": "2026-11-02T10:00:00Z"}
    ).json()
    before = api.patch(
        f"/incidents/{early['id']}", {"status": "resolved", "resolved_at": "2026-11-02T09:00:00Z"}
    )
    assert_problem(before, 422, "before it began")


def test_a_stranger_cannot_see_or_resolve_an_incident(api, board, mallory):
    incident = api.post("/incidents", {"board": "PAY", "title": "x"}).json()
    stranger = Api(token_for(mallory))
    assert_problem(stranger.patch(f"/incidents/{incident['id']}", {"status": "resolved"}), 404)
    assert_problem(stranger.post("/incidents", {"board": "PAY", "title": "y"}), 404)


def test_a_deployment_is_rolled_back_once_and_only_if_it_succeeded(api, board):
    shipped = deployment(api, board, finished_at="2026-11-02T10:00:00Z")
    too_early = api.patch(
        f"/deployments/{shipped['id']}",
        {"status": "rolled_back", "rolled_back_at": "2026-11-02T09:00:00Z"},
    )
    assert_problem(too_early, 422, "before it finished")
    rolled = api.patch(
        f"/deployments/{shipped['id']}",
        {"status": "rolled_back", "rolled_back_at": "2026-11-02T10:20:00Z"},
    )
    assert rolled.status_code == 200, rolled.content
    assert rolled.json() == {
        "id": shipped["id"],
        "board": "PAY",
        "version": "1.0",
        "environment": "production",
        "status": "rolled_back",
        "rolled_back_at": "2026-11-02T10:20:00Z",
    }
    assert_problem(api.patch(f"/deployments/{shipped['id']}", {"status": "rolled_back"}), 409)
    failed = deployment(api, board, status="failed")
    assert_problem(
        api.patch(f"/deployments/{failed['id']}", {"status": "rolled_back"}), 409, "failed"
    )
    assert_problem(api.patch("/deployments/1234567", {"status": "rolled_back"}), 404)
    rollback = Event.objects.get(kind=EventKind.DEPLOYMENT_ROLLED_BACK)
    assert event_describe(rollback) == "rolled back the deployment 1.0 in production"


def test_a_deployment_reported_rolled_back_delivers_nothing(api, board):
    card = make_card(board, title="Reverted")
    response = api.post(
        "/deployments",
        {
            "board": "PAY",
            "version": "3",
            "environment": "production",
            "status": "rolled_back",
            "cards": [card.ref],
        },
    )
    assert response.status_code == 201, response.content
    assert response.json()["moved"] == []
    card.refresh_from_db()
    assert card.column.name == "To Do"


def test_a_viewer_may_not_open_incidents(board, victor):
    viewer = Api(token_for(victor))
    assert_problem(viewer.post("/incidents", {"board": "PAY", "title": "x"}), 403)
