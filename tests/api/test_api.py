"""The REST API as a CI pipeline uses it: tokens, scopes, every endpoint, errors, retries."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import ApiToken, Card, Label, Role
from boards.tokens import token_create, token_revoke
from tests.conftest import as_actor, column, column_titles, make_card

pytestmark = pytest.mark.django_db


def token_for(user, **scope) -> str:
    _, secret = token_create(actor=Actor(user=user), user=user, name=f"{user}-ci", **scope)
    return secret


class Api:
    """A Django test client that speaks JSON with a bearer token."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path, **params):
        return self.client.get("/api/v1" + path, params, headers=self.headers)

    def post(self, path, body, *, key=None, raw=None):
        headers = self.headers | ({"Idempotency-Key": key} if key else {})
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(
            "/api/v1" + path, data, content_type="application/json", headers=headers
        )

    def patch(self, path, body):
        return self.client.patch(
            "/api/v1" + path,
            json.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


@pytest.fixture
def api(board, bob):
    """bob's editor token for all his boards."""
    return Api(token_for(bob))


def assert_problem(response, status: int, text: str = "") -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert text in body["detail"]
    return body


# --- tokens -----------------------------------------------------------------------------------


@pytest.mark.sqlite
def test_tokens_are_stored_hashed_and_work_until_revoked(board, bob):
    token, secret = token_create(actor=Actor(user=bob), user=bob, name="deploy-bot")
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret.startswith("flux_")
    assert len(secret) > 40
    assert secret not in (stored.digest, stored.prefix)
    assert stored.digest != secret
    client = Api(secret)
    assert client.get("/boards").status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None
    token_revoke(actor=Actor(user=bob), token_id=token.pk)
    assert_problem(client.get("/boards"), 401)


@pytest.mark.sqlite
def test_missing_or_bad_tokens_get_401(board):
    for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic Ym9iOnB3"}]:
        response = Client().get("/api/v1/boards", headers=headers)
        assert_problem(response, 401)
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_createtoken_prints_a_working_token_once(board, bob, capsys):
    call_command("createtoken", user="bob", board=["PAY"], role="viewer")
    out = capsys.readouterr()
    secret = out.out.strip()
    assert "shown only now" in out.err
    token = ApiToken.objects.get(prefix=secret[:12])
    assert token.role == "viewer"
    assert list(token.boards.values_list("key", flat=True)) == ["PAY"]
    assert Api(secret).get("/boards/PAY").status_code == 200


def test_a_token_acts_under_its_name_and_source_api(api, board):
    response = api.post("/boards/PAY/cards", {"title": "From CI"})
    assert response.status_code == 201
    event = Event.objects.get(kind=EventKind.CARD_CREATED)
    assert event.actor is not None
    assert (event.actor_name, event.via, event.source) == ("bob", "bob-ci", "api")
    assert event.actor.username == "bob"


def test_a_token_for_board_a_cannot_read_or_touch_board_b(board, bob, alice):
    other = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    services.membership_set(actor=as_actor(alice), board_id=other.pk, user_id=bob.pk, role="editor")
    card = make_card(other, title="Cart")
    scoped = Api(token_for(bob, board_keys=["PAY"]))
    assert [b["key"] for b in scoped.get("/boards").json()] == ["PAY"]
    assert_problem(scoped.get("/boards/CHK"), 404)
    assert_problem(scoped.get("/boards/CHK/cards"), 404)
    assert_problem(scoped.get("/boards/CHK/events"), 404)
    assert_problem(scoped.get(f"/cards/{card.ref}"), 404)
    assert_problem(scoped.post(f"/cards/{card.ref}/move", {"to": "Staging"}), 404)
    assert_problem(
        scoped.post(
            "/deployments",
            {"board": "CHK", "version": "1", "environment": "production", "status": "success"},
        ),
        404,
    )
    assert column_titles(other, "To Do") == ["Cart"]


def test_a_viewer_token_cannot_write(board, bob):
    card = make_card(board, title="Refunds")
    viewer = Api(token_for(bob, role="viewer"))
    assert viewer.get(f"/cards/{card.ref}").status_code == 200
    before = Event.objects.count()
    assert_problem(viewer.post("/boards/PAY/cards", {"title": "x"}), 403)
    assert_problem(viewer.patch(f"/cards/{card.ref}", {"title": "x"}), 403)
    assert_problem(viewer.post(f"/cards/{card.ref}/move", {"to": "Staging"}), 403)
    assert_problem(
        viewer.post(
            "/deployments",
            {
                "board": "PAY",
                "version": "1",
                "environment": "production",
                "status": "success",
                "cards": [card.ref],
            },
        ),
        403,
    )
    assert Event.objects.count() == before


def test_a_token_never_does_more_than_its_user(board, victor):
    """victor is a viewer on PAY: his editor token is still read-only there."""
    card = make_card(board, title="Refunds")
    token = Api(token_for(victor, role="editor"))
    assert token.get(f"/cards/{card.ref}").status_code == 200
    assert_problem(token.post(f"/cards/{card.ref}/move", {"to": "Staging"}), 403)


def test_non_members_and_unknown_boards_look_the_same(board, mallory):
    outsider = Api(token_for(mallory))
    assert outsider.get("/boards").json() == []
    hidden = assert_problem(outsider.get("/boards/PAY"), 404)
    unknown = assert_problem(outsider.get("/boards/NOPE"), 404)
    assert hidden == unknown


# --- boards and cards -------------------------------------------------------------------------


def test_board_detail_lists_columns_with_stage_counts_and_wip_limits(api, board, alice):
    services.column_update(
        actor=as_actor(alice), column_id=column(board, "In Review").pk, wip_limit=3
    )
    make_card(board, title="one")
    body = api.get("/boards/pay").json()
    assert body["key"] == "PAY"
    review = next(c for c in body["columns"] if c["name"] == "In Review")
    assert (review["stage"], review["wip_limit"], review["open_cards"]) == ("review", 3, 0)
    assert body["columns"][0]["open_cards"] == 1


def test_card_list_filters_and_paginates(api, board, bob):
    for i in range(7):
        make_card(board, title=f"card {i}", column_name="Staging" if i % 2 else "To Do")
    bug = services.label_create(actor=as_actor(bob), board_id=board.pk, name="bug")
    services.card_label_add(
        actor=as_actor(bob), card_id=Card.objects.get(number=3).pk, label_id=bug.pk
    )
    page = api.get("/boards/PAY/cards", limit=3).json()
    assert page["count"] == 7
    assert [c["ref"] for c in page["items"]] == ["PAY-1", "PAY-3", "PAY-5"]
    second = api.get("/boards/PAY/cards", limit=3, offset=3).json()
    assert [c["ref"] for c in second["items"]] == ["PAY-7", "PAY-2", "PAY-4"]
    assert api.get("/boards/PAY/cards", stage="staging").json()["count"] == 3
    assert api.get("/boards/PAY/cards", column="Staging").json()["count"] == 3
    assert [c["ref"] for c in api.get("/boards/PAY/cards", label="bug").json()["items"]] == [
        "PAY-3"
    ]
    assert api.get("/boards/PAY/cards", q="card 6").json()["items"][0]["ref"] == "PAY-7"
    assert_problem(api.get("/boards/PAY/cards", limit=0), 422)
    assert_problem(api.get("/boards/PAY/cards", column="Nowhere"), 422, "no column or stage")


def test_create_get_and_patch_a_card(api, board, bob):
    created = api.post(
        "/boards/PAY/cards",
        {"title": "Retry payouts", "column": "in_progress", "labels": ["ci"], "assignees": ["bob"]},
    )
    assert created.status_code == 201
    card = created.json()
    assert (card["ref"], card["column"], card["labels"], card["assignees"]) == (
        "PAY-1",
        "In Progress",
        ["ci"],
        ["bob"],
    )
    assert api.get("/cards/pay-1").json()["title"] == "Retry payouts"
    patched = api.patch("/cards/PAY-1", {"title": "Retry payouts v2", "due_date": "2026-12-31"})
    assert patched.json()["title"] == "Retry payouts v2"
    assert patched.json()["due_date"] == "2026-12-31"
    stale = assert_problem(
        api.patch("/cards/PAY-1", {"title": "x", "expected_version": card["version"]}), 409
    )
    assert stale["current_version"] == patched.json()["version"]
    assert Card.objects.get(number=1).title == "Retry payouts v2"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"title": ""}, 422),
        ({"title": "x" * 10_000}, 422),
        ({"title": "   "}, 422),
        ({"title": "ok", "column": "Nowhere"}, 422),
        ({"title": "ok", "assignees": ["ghost"]}, 422),
        ({"title": "ok", "due_date": "tomorrow"}, 422),
        ({}, 422),
    ],
)
def test_bad_cards_are_refused_and_nothing_is_written(api, board, body, status):
    before = (Card.objects.count(), Event.objects.count(), Label.objects.count())
    assert_problem(api.post("/boards/PAY/cards", body), status)
    assert (Card.objects.count(), Event.objects.count(), Label.objects.count()) == before


def test_malformed_json_is_a_client_error(api, board):
    response = api.post("/boards/PAY/cards", None, raw="{not json")
    assert response.status_code in (400, 422)
    assert Card.objects.count() == 0


def test_move_by_column_name_or_stage_with_neighbours(api, board):
    a, b, c = (make_card(board, title=t) for t in "abc")
    assert api.post(f"/cards/{a.ref}/move", {"to": "Staging"}).json()["column"] == "Staging"
    api.post(f"/cards/{b.ref}/move", {"to": "staging", "after": a.ref})
    api.post(f"/cards/{c.ref}/move", {"to": "STAGING", "before": a.ref})
    assert column_titles(board, "Staging") == ["c", "a", "b"]
    assert_problem(api.post(f"/cards/{a.ref}/move", {"to": "Staging", "after": "PAY-99"}), 422)


def test_moving_to_the_column_a_card_is_in_is_a_no_op(api, board):
    card = make_card(board, title="a")
    make_card(board, title="b")
    api.post(f"/cards/{card.ref}/move", {"to": "In Review"})
    before = Event.objects.count()
    response = api.post(f"/cards/{card.ref}/move", {"to": "review"})
    assert response.status_code == 200
    assert response.json()["column"] == "In Review"
    assert Event.objects.count() == before


def test_stale_moves_and_blocked_columns_are_409(api, board, alice):
    card = make_card(board, title="a")
    other = make_card(board, title="b")
    moved = api.post(f"/cards/{card.ref}/move", {"to": "In Progress", "expected_version": 1})
    assert moved.status_code == 200
    assert_problem(
        api.post(f"/cards/{card.ref}/move", {"to": "Staging", "expected_version": 1}), 409
    )
    services.column_update(
        actor=as_actor(alice), column_id=column(board, "Staging").pk, wip_limit=1, wip_blocks=True
    )
    api.post(f"/cards/{card.ref}/move", {"to": "Staging"})
    body = assert_problem(api.post(f"/cards/{other.ref}/move", {"to": "Staging"}), 409)
    assert "WIP limit" in body["detail"]
    assert body["type"].endswith("wip-limit")


def test_unknown_cards_are_404(api, board):
    for ref in ["PAY-999", "NOPE-1", "garbage", "PAY-", "-1", "PAY-1-2"]:
        assert_problem(api.get(f"/cards/{ref}"), 404)


# --- deployments ------------------------------------------------------------------------------


def deployment(**fields) -> dict:
    return {
        "board": "PAY",
        "version": "2026.11.3",
        "environment": "production",
        "status": "success",
    } | fields


def test_a_production_deployment_moves_and_labels_its_cards(api, board):
    a, b = make_card(board, title="a"), make_card(board, title="b", column_name="Staging")
    response = api.post(
        "/deployments",
        deployment(
            cards=[a.ref, b.ref],
            commits=[{"sha": "abc1234", "timestamp": "2026-11-28T10:00:00Z"}],
            url="https://ci.example/run/1",
        ),
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["cards"], body["moved"]) == (["PAY-1", "PAY-2"], ["PAY-1", "PAY-2"])
    assert set(column_titles(board, "Deployed")) == {"a", "b"}
    assert Label.objects.get(board=board, name="2026.11.3").kind == "release"
    event = Event.objects.get(kind=EventKind.DEPLOYMENT_RECORDED)
    assert event.payload["deployment"]["commits"][0]["sha"] == "abc1234"
    assert event.payload["deployment"]["cards"] == [
        {"id": a.pk, "ref": "PAY-1", "number": 1},
        {"id": b.pk, "ref": "PAY-2", "number": 2},
    ]
    assert api.get("/cards/PAY-1").json()["releases"] == ["2026.11.3"]


def test_cards_can_come_from_commit_messages(api, board):
    make_card(board, title="a")
    make_card(board, title="b")
    response = api.post(
        "/deployments",
        deployment(
            environment="staging",
            commits=[{"sha": "abc1234", "message": "Fix PAY-2 (refs CHK-9, PAY-2)"}],
        ),
    )
    assert response.json()["cards"] == ["PAY-2"]
    assert column_titles(board, "Staging") == ["b"]


def test_a_failed_deployment_is_recorded_and_moves_nothing(api, board):
    card = make_card(board, title="a", column_name="Staging")
    response = api.post("/deployments", deployment(status="failed", cards=[card.ref]))
    assert response.status_code == 201
    assert response.json()["moved"] == []
    assert column_titles(board, "Staging") == ["a"]
    assert (
        Event.objects.get(kind=EventKind.DEPLOYMENT_RECORDED).payload["deployment"]["status"]
        == "failed"
    )


def test_a_deployment_naming_an_unknown_card_writes_nothing(api, board):
    card = make_card(board, title="a")
    before = Event.objects.count()
    body = assert_problem(api.post("/deployments", deployment(cards=[card.ref, "PAY-77"])), 422)
    assert "PAY-77" in body["detail"]
    assert_problem(api.post("/deployments", deployment(status="maybe")), 422)
    assert_problem(api.post("/deployments", deployment(commits=[{"sha": "zz"}])), 422)
    assert Event.objects.count() == before
    assert column_titles(board, "To Do") == ["a"]


# --- events -----------------------------------------------------------------------------------


def test_events_page_in_a_stable_order(api, board):
    for i in range(5):
        make_card(board, title=f"c{i}")
    first = api.get("/boards/PAY/events", limit=4).json()
    ids = [e["id"] for e in first["items"]]
    assert ids == sorted(ids)
    rest = api.get("/boards/PAY/events", after=first["next_after"], limit=100).json()
    assert rest["next_after"] is None
    everything = ids + [e["id"] for e in rest["items"]]
    assert everything == list(Event.objects.filter(board=board).values_list("id", flat=True))
    assert rest["items"][-1]["card"] == "PAY-5"
    assert rest["items"][-1]["kind"] == EventKind.CARD_CREATED


# --- retries and limits -----------------------------------------------------------------------


def test_the_same_idempotency_key_replays_the_first_answer(api, board):
    card = make_card(board, title="a")
    body = deployment(cards=[card.ref])
    first = api.post("/deployments", body, key="deploy-42")
    again = api.post("/deployments", body, key="deploy-42")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again["Idempotent-Replay"] == "true"
    assert Event.objects.filter(kind=EventKind.DEPLOYMENT_RECORDED).count() == 1
    different = api.post(
        "/deployments", deployment(version="other", cards=[card.ref]), key="deploy-42"
    )
    assert_problem(different, 422)
    assert Event.objects.filter(kind=EventKind.DEPLOYMENT_RECORDED).count() == 1


def test_refusals_are_replayed_too_but_auth_failures_are_not(board, bob):
    token = token_for(bob)
    api = Api(token)
    first = api.post("/boards/PAY/cards", {"title": ""}, key="k1")
    assert first.status_code == 422
    assert api.post("/boards/PAY/cards", {"title": ""}, key="k1").json() == first.json()
    anonymous = Api(None)
    assert anonymous.post("/boards/PAY/cards", {"title": "x"}, key="k2").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_key_record_exactly_one_deployment(board, bob):
    card = make_card(board, title="a", column_name="Staging")
    token = token_for(bob)
    body = deployment(cards=[card.ref])
    barrier = threading.Barrier(6)

    def send(_):
        try:
            barrier.wait()
            return Api(token).post("/deployments", body, key="same-key").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, range(6)))

    assert statuses == [201] * 6
    assert Event.objects.filter(kind=EventKind.DEPLOYMENT_RECORDED).count() == 1
    assert Event.objects.filter(kind=EventKind.CARD_MOVED).count() == 1


def test_a_token_over_its_rate_limit_gets_429(board, bob, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    api = Api(token_for(bob))
    statuses = [api.get("/boards").status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    response = api.get("/boards")
    body = assert_problem(response, 429)
    assert "3 requests a minute" in body["detail"]
    assert 0 < int(response["Retry-After"]) <= 60


# --- schema and docs --------------------------------------------------------------------------


@pytest.mark.sqlite
def test_the_openapi_schema_and_offline_docs_are_served(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/deployments" in schema["paths"]
    docs = client.get("/api/v1/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle" in docs
    assert "cdn" not in docs.lower()


def test_the_token_settings_page_makes_and_revokes_tokens(client, board, bob):
    client.force_login(bob)
    page = client.post("/settings/tokens/", {"name": "deploy", "role": "editor", "boards": ["PAY"]})
    assert page.status_code == 200
    secret = page.context["secret"]
    assert secret in page.content.decode()
    assert page["Cache-Control"] == "no-store"
    assert Api(secret).get("/boards/PAY").status_code == 200
    listing = client.get("/settings/tokens/").content.decode()
    assert secret not in listing
    token = ApiToken.objects.get(name="deploy")
    client.post("/settings/tokens/", {"revoke": token.pk})
    assert_problem(Api(secret).get("/boards/PAY"), 401)


def test_the_admin_makes_a_token_and_shows_it_once(client, board, staff, bob):
    client.force_login(staff)
    response = client.post(
        "/admin/boards/apitoken/add/",
        {"user": bob.pk, "name": "admin-made", "role": "viewer", "boards": []},
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    secret = next(m for m in messages if "not shown again" in m).rsplit(" ", 1)[-1]
    assert Api(secret).get("/boards").status_code == 200
    assert ApiToken.objects.get(name="admin-made").role == "viewer"


@pytest.mark.parametrize(
    "since",
    ["2552-10-10T09:01:40.156-19:21", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
     "2026-11-29T10:00:00", "2026-11-29"],
)  # fmt: skip
def test_any_iso_time_in_a_query_is_a_2xx_or_a_422(board, bob, since):
    response = Api(token_for(bob)).get("/deployments.csv", since=since)
    assert response.status_code in (200, 422), response.content


def test_a_revoked_token_cannot_replay_its_stored_answer(board, bob):
    card = make_card(board, title="a", column_name="Staging")
    token, secret = token_create(actor=Actor(user=bob), user=bob, name="ci")
    api = Api(secret)
    body = deployment(cards=[card.ref])
    assert api.post("/deployments", body, key="once").status_code == 201
    token_revoke(actor=Actor(user=bob), token_id=token.pk)
    assert_problem(api.post("/deployments", body, key="once"), 401)


def test_a_staging_deployment_never_moves_a_card_backwards(api, board):
    make_card(board, title="shipped", column_name="Deployed")
    response = api.post(
        "/deployments",
        deployment(environment="staging", commits=[{"sha": "abc1234", "message": "see PAY-1"}]),
    )
    assert response.status_code == 201
    assert response.json()["moved"] == []
    assert column_titles(board, "Deployed") == ["shipped"]


@pytest.mark.parametrize(
    "finished_at", ["9999-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "2026-13-01T00:00:00Z"]
)
def test_deployment_times_outside_the_calendar_flux_keeps_are_refused(api, board, finished_at):
    card = make_card(board, title="a", column_name="Staging")
    assert_problem(
        api.post("/deployments", deployment(cards=[card.ref], finished_at=finished_at)), 422
    )
    assert not Event.objects.filter(kind=EventKind.DEPLOYMENT_RECORDED).exists()


@pytest.mark.parametrize("route", ["create", "move", "deploy"])
@pytest.mark.parametrize("lost", ["removed", "viewer"])
def test_a_replay_is_refused_once_the_caller_lost_access_to_the_board(
    api, board, alice, bob, route, lost
):
    """The stored answer is only for someone who may still make the request: the route's
    own access check is made again, and a caller who lost access gets the route's answer."""
    card = make_card(board, title="a")
    path, body, status = {
        "create": ("/boards/PAY/cards", {"title": "Retried"}, 201),
        "move": (f"/cards/{card.ref}/move", {"to": "In Progress"}, 200),
        "deploy": ("/deployments", deployment(cards=[card.ref]), 201),
    }[route]
    first = api.post(path, body, key="retry-me")
    assert first.status_code == status
    assert api.post(path, body, key="retry-me")["Idempotent-Replay"] == "true"
    if lost == "removed":
        services.membership_remove(actor=Actor(user=alice), board_id=board.pk, user_id=bob.pk)
    else:
        services.membership_set(
            actor=Actor(user=alice), board_id=board.pk, user_id=bob.pk, role=Role.VIEWER
        )
    replayed = api.post(path, body, key="retry-me")
    fresh = api.post(path, body, key="a-new-key")
    assert replayed.status_code == fresh.status_code
    assert replayed.status_code in (403, 404)
    assert replayed.json() == fresh.json()
    assert "Idempotent-Replay" not in replayed
