"""Who may verify the log from the admin, and that reading history never writes."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from activity.models import Event
from history import replay
from history.models import BoardSnapshot
from tests.conftest import make_card, make_user

pytestmark = pytest.mark.django_db

VERIFY = "/admin/activity/event/verify/"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_the_permission_may_not_verify_the_log(board):
    clerk = make_user("clerk", is_staff=True)
    assert client_for(clerk).get(VERIFY).status_code == 403
    assert client_for(clerk).get(VERIFY + "?board=PAY").status_code == 403


def test_the_verify_permission_or_a_superuser_may(board):
    auditor = make_user("auditor", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="verify_event"))
    root = make_user("root", is_staff=True, is_superuser=True)
    for user in (auditor, root):
        page = client_for(user).get(VERIFY)
        assert page.status_code == 200 and "Verified:" in page.content.decode()


def test_a_history_page_view_writes_no_snapshot(board, alice, monkeypatch):
    monkeypatch.setattr(replay, "SNAPSHOT_EVERY", 2)
    for i in range(4):
        make_card(board, title=f"card {i}")
    newest = Event.objects.filter(board=board).order_by("-seq").first()
    assert newest is not None
    client = client_for(alice)
    for url in ("/b/PAY/history/", f"/b/PAY/history/?event={newest.pk}"):
        assert client.get(url).status_code == 200
    assert client.get("/b/PAY/history/", headers={"HX-Request": "true"}).status_code == 200
    assert not BoardSnapshot.objects.exists()
