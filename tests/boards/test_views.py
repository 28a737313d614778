"""The pages that prove Flux runs: login, board list, board page, health."""

import pytest
from django.urls import reverse

from tests.conftest import make_card, make_user

pytestmark = pytest.mark.django_db


@pytest.mark.sqlite
def test_anonymous_visitors_are_sent_to_log_in(client, board):
    for url in [reverse("boards:list"), reverse("boards:detail", args=["PAY"])]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


@pytest.mark.sqlite
def test_logging_in_lands_on_the_board_list(client, board, bob):
    response = client.post(reverse("login"), {"username": "bob", "password": "pw-bob"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("boards:list")
    assert b"Payments" in response.content


def test_the_board_list_shows_only_the_users_boards_with_counts_per_stage(client, board, bob):
    from activity.log import Actor
    from boards import services

    services.board_create(actor=Actor(user=make_user("carol")), name="Secret", key="SEC")
    make_card(board, title="One")
    make_card(board, title="Two", column_name="Staging")
    client.force_login(bob)
    response = client.get(reverse("boards:list"))
    (listed,) = response.context["boards"]
    assert listed.key == "PAY"
    assert {stage.value: n for stage, n in listed.open_by_stage} == {
        "todo": 1,
        "in_progress": 0,
        "review": 0,
        "staging": 1,
        "deployed": 0,
    }
    assert b"Secret" not in response.content


@pytest.mark.sqlite
def test_the_board_page_shows_columns_in_pipeline_order_and_the_cards(client, board, victor):
    make_card(board, title="Refund <b>all</b> the things")
    client.force_login(victor)
    response = client.get(reverse("boards:detail", args=["pay"]))
    assert response.status_code == 200
    html = response.content.decode()
    positions = [html.index(f">{name}</h2>") for name in
                 ["To Do", "In Progress", "In Review", "Staging", "Deployed"]]  # fmt: skip
    assert positions == sorted(positions)
    assert "PAY-1" in html
    assert "Refund &lt;b&gt;all&lt;/b&gt; the things" in html


def main_of(response) -> str:
    html = response.content.decode()
    return html[html.index("<main") : html.index("</main>")]


@pytest.mark.sqlite
def test_a_non_member_gets_404_on_the_board_page(client, board, mallory):
    client.force_login(mallory)
    response = client.get(reverse("boards:detail", args=["PAY"]))
    assert response.status_code == 404
    missing = client.get(reverse("boards:detail", args=["NOPE"]))
    assert missing.status_code == 404
    assert main_of(response) == main_of(missing)  # the board's existence is not revealed


def test_staff_see_every_board(client, board, staff):
    client.force_login(staff)
    assert client.get(reverse("boards:detail", args=["PAY"])).status_code == 200


@pytest.mark.sqlite
def test_healthz_reports_the_database_and_redis(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["database"]["ok"] is True
    if settings.REDIS_URL:
        assert body["redis"] == {"configured": True, "ok": True, "ms": body["redis"]["ms"]}
        assert body["status"] == "ok"
    else:
        assert body["redis"] == {"configured": False}


def test_healthz_says_degraded_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    body = client.get("/healthz").json()
    assert body["status"] == "degraded"
    assert body["redis"]["ok"] is False
    assert body["database"]["ok"] is True


def test_logging_out_needs_a_post(client, bob):
    client.force_login(bob)
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("boards:list")).status_code == 302
