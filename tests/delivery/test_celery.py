"""The rollups run by a real Celery worker on the Redis broker, not eagerly in-process."""

import time

import pytest
from celery.contrib.testing.worker import start_worker

from boards import services
from delivery.models import Deployment, DeploymentCard
from flux.celery import app
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_move_into_deployed_reaches_the_rollups_within_seconds(board, bob, settings):
    assert settings.REDIS_URL, "make test runs this against Redis"
    assert not app.conf.task_always_eager
    app.control.purge()  # tasks other tests enqueued without a worker
    card = make_card(board, title="Ship it", column_name="Staging")
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        moved_at = time.monotonic()
        services.card_move(
            actor=as_actor(bob),
            card_id=card.pk,
            to_column_id=column(board, "Deployed").pk,
            expected_version=card.version,
        )
        while time.monotonic() - moved_at < 10:
            if DeploymentCard.objects.filter(card=card).exists():
                break
            time.sleep(0.05)
        latency = time.monotonic() - moved_at
    delivered = DeploymentCard.objects.get(card=card)
    assert delivered.deployment.kind == "manual"
    assert Deployment.objects.count() == 1
    assert latency < 5, f"the rollup took {latency:.1f} s"
    print(f"move into Deployed to rollup row: {latency * 1000:.0f} ms")
