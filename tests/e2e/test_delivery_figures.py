"""A CI pipeline's history through the real API, and the figures the insights page and its CSV
show for it, read in Chromium: lead times equal to those worked out by hand.

Every pipeline reports a deployment after it has finished, with `finished_at` a moment before
the post, and its commits were made days before. A deployment's own commits must start its
cards' (and its changes') lead time however late the report comes: before that was so, each
card's lead time ran from its creation instead (ten days here), and the changes counted none.
"""

import csv
import datetime
import io
import json
import re
import urllib.request

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from activity import clock
from activity.log import Actor
from boards import services
from boards.models import Board
from boards.tokens import token_create
from tests.conftest import rollups_settle
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

DAY = 86_400


def api_post(server, token: str, path: str, body: dict) -> dict:
    """POST `body` as JSON to the running server's API with a bearer token; its answer."""
    request = urllib.request.Request(
        server.url + "/api/v1" + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201
        return json.loads(answer.read())


def test_lead_times_from_a_pipeline_that_reports_after_finishing(
    page: Page, app_server, payments: Board, browser_log
):
    bob = payments.memberships.get(user__username="bob").user
    _, token = token_create(actor=Actor(user=bob), user=bob, name="ci")
    ten_days_ago = timezone.now() - datetime.timedelta(days=10)
    with clock.frozen_at(ten_days_ago):
        for title in ("Refund by bank transfer", "Payout report"):  # PAY-2, PAY-3
            services.card_create(actor=Actor(user=bob), board_id=payments.pk, title=title)

    def deploy(version: str, status: str, cards: list[str], commits: dict[str, float]) -> dict:
        """Post a deployment that finished a minute ago, with commits made `days` before."""
        finished = timezone.now().replace(microsecond=0) - datetime.timedelta(minutes=1)
        answer = api_post(app_server, token, "/deployments", {
            "board": "PAY", "version": version, "environment": "production",
            "status": status, "cards": cards, "finished_at": finished.isoformat(),
            "commits": [
                {"sha": sha, "timestamp": (finished - datetime.timedelta(days=days)).isoformat()}
                for sha, days in commits.items()
            ],
        })  # fmt: skip
        return {"id": answer["id"], "finished": finished}

    first = deploy("2026.1", "success", ["PAY-2"], {"aaaa1111": 3, "bbbb2222": 1})
    failed = deploy("2026.2", "failed", ["PAY-3"], {"dddd4444": 4})
    second = deploy("2026.3", "success", ["PAY-3"], {"cccc3333": 2})
    rollups_settle()

    # By hand, each time from the deployment's own `finished_at`:
    # - changes: aaaa1111 shipped 3 days after its commit, bbbb2222 1 day, cccc3333 2 days
    #   (dddd4444 only went out in the failed deployment: no change shipped). Sorted 1, 2, 3
    #   days: p50 = 2 days = 172800 s; p85 at rank (3 - 1) * 0.85 = 1.7, 2 + 0.7 * (3 - 2)
    #   = 2.7 days = 233280 s.
    # - cards: PAY-2 from its deployment's first commit, 3 days = 259200 s; PAY-3 from the
    #   first commit of the deployments that named it by then: the failed one's, 4 days
    #   before *that* deployment finished, which was a moment before the second's. So PAY-3's
    #   lead time is 4 days plus the seconds between the two finishes.
    gap = (second["finished"] - failed["finished"]).total_seconds()
    card_leads = sorted([3 * DAY, 4 * DAY + gap])
    card_p50 = (card_leads[0] + card_leads[1]) / 2  # two samples: their mean

    log_in(page, "bob")
    page.goto("/b/PAY/insights/")
    change = page.locator('.figure[data-metric="change_lead_time"]')
    expect(change).to_have_attribute("data-seconds", "172800.0")
    expect(change).to_have_attribute("data-p85-seconds", "233280.0")
    expect(change).to_have_attribute("data-count", "3")
    expect(change).to_have_attribute("title", re.compile(r"\bof 3 changes\b"))  # its definition
    assert change.inner_text().strip()  # a duration is shown, in whatever unit the page picks
    card = page.locator('.figure[data-metric="card_lead_time"]')
    assert float(card.get_attribute("data-seconds") or "nan") == pytest.approx(card_p50)
    expect(card).to_have_attribute("data-count", "2")

    with page.expect_download() as download:
        page.get_by_role("link", name="Deployment history (CSV)").click()
    text = download.value.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    delivered = {
        (int(row["deployment_id"]), row["card_ref"]): (
            datetime.datetime.fromisoformat(row["deployed_at"]),
            float(row["lead_time_seconds"]),
        )
        for row in rows
        if row["card_ref"]
    }
    # The ids the API answered with; the deployments' own finish times; the lead times above.
    assert delivered == {
        (first["id"], "PAY-2"): (first["finished"], 3 * DAY),
        (second["id"], "PAY-3"): (second["finished"], 4 * DAY + gap),
    }
    failed_rows = [row for row in rows if row["deployment_id"] == str(failed["id"])]
    assert [row["status"] for row in failed_rows] == ["failed"]

    assert browser_log.problems() == []
