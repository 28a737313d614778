"""`manage.py seed_demo`: three services with ~90 days of delivery history, made by the services.

Idempotent: a board that already exists is left alone, so running it again changes nothing.
History is replayed in time order under `activity.clock.frozen_at`, so every card, move and
release carries the moment it happened, and the event log reads like a real quarter.
"""

import heapq
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from activity import clock
from activity.log import Actor
from activity.models import Source
from boards import services
from boards.models import Board, Card, Role

User = get_user_model()

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"
TEAMMATES = ["maya", "leo", "priya", "tomas"]

SERVICES = [
    (
        "Payments",
        "PAY",
        "Card captures, refunds and payouts.",
        ["card capture", "refund flow", "payout batch", "3-D Secure challenge", "ledger export",
         "chargeback webhook", "currency rounding", "settlement report", "idempotency keys",
         "PSP failover"],
    ),
    (
        "Checkout",
        "CHK",
        "Cart, address and payment steps of the storefront.",
        ["cart summary", "address autocomplete", "promo codes", "guest checkout", "tax estimate",
         "shipping options", "order confirmation email", "saved cards", "mobile layout",
         "cart recovery"],
    ),
    (
        "Search",
        "SRCH",
        "Product search, ranking and suggestions.",
        ["query suggestions", "typo tolerance", "synonym list", "facet counts", "ranking model",
         "index rebuild", "zero-result page", "search analytics", "stock filter",
         "language stemming"],
    ),
]  # fmt: skip
VERBS = ["Add", "Fix", "Speed up", "Refactor", "Instrument", "Harden", "Redesign", "Document"]
LABELS = [("bug", "#dc2626"), ("feature", "#2563eb"), ("tech-debt", "#64748b"), ("ux", "#db2777")]
PIPELINE = ["In Progress", "In Review", "Staging"]
DAYS = 90


@dataclass(order=True)
class Step:
    at: datetime
    order: int
    action: str = field(compare=False)
    card_index: int = field(compare=False, default=-1)
    target: str = field(compare=False, default="")


class Command(BaseCommand):
    help = "Create the demo login and three services with about 90 days of history."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=DAYS, help="Days of history (90).")
        parser.add_argument("--cards", type=int, default=55, help="Cards per board (55).")

    def handle(self, *args, days: int, cards: int, **options):
        demo = self._demo_user()
        team = [demo, *(self._teammate(name) for name in TEAMMATES)]
        for index, (name, key, description, topics) in enumerate(SERVICES):
            if Board.objects.filter(key=key).exists():
                self.stdout.write(f"{key}: already there, left as it is")
                continue
            self._seed_board(
                name=name,
                key=key,
                description=description,
                topics=topics,
                team=team,
                rng=random.Random(1000 + index),
                days=days,
                cards=cards,
            )
        self.stdout.write(
            self.style.SUCCESS(f"Demo login: {DEMO_USERNAME} / {DEMO_PASSWORD} (local use only)")
        )

    def _demo_user(self):
        user, created = User.objects.get_or_create(
            username=DEMO_USERNAME,
            defaults={"is_staff": True, "is_superuser": True, "first_name": "Demo"},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        return user

    def _teammate(self, name: str):
        user, created = User.objects.get_or_create(
            username=name, defaults={"first_name": name.title()}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        return user

    def _seed_board(self, *, name, key, description, topics, team, rng, days, cards):
        now = timezone.now().replace(microsecond=0)
        start = now - timedelta(days=days)
        demo = Actor(user=team[0])
        with clock.frozen_at(start):
            board = services.board_create(actor=demo, name=name, key=key, description=description)
            for member in team[1:]:
                services.membership_set(
                    actor=demo, board_id=board.pk, user_id=member.pk, role=Role.EDITOR
                )
            labels = {
                label: services.label_create(
                    actor=demo, board_id=board.pk, name=label, colour=colour
                ).pk
                for label, colour in LABELS
            }
        steps = self._plan(rng=rng, start=start, now=now, days=days, cards=cards)
        columns = {c.name: c.pk for c in board.columns.all()}
        created: dict[int, int] = {}
        release_bot = Actor(user=None, source=Source.SYSTEM, name="ci-pipeline")
        releases_per_month: dict[str, int] = {}
        for step in tqdm(steps, desc=f"{key} history", unit="step", disable=None):
            teammate = rng.choice(team)
            person = Actor(user=teammate)
            with clock.frozen_at(step.at), transaction.atomic():
                if step.action == "create":
                    topic = rng.choice(topics)
                    card = services.card_create(
                        actor=person,
                        board_id=board.pk,
                        title=f"{rng.choice(VERBS)} {topic}",
                        description=f"Part of the {name} roadmap: {topic}.",
                    )
                    created[step.card_index] = card.pk
                    if rng.random() < 0.8:
                        services.card_label_add(
                            actor=person,
                            card_id=card.pk,
                            label_id=rng.choice(list(labels.values())),
                        )
                elif step.action == "move" and step.card_index in created:
                    card = Card.objects.get(pk=created[step.card_index])
                    if step.target == "In Progress" and not card.assignees.exists():
                        services.card_assign(actor=person, card_id=card.pk, user_ids=[teammate.pk])
                        card.refresh_from_db()
                    services.card_move(
                        actor=person,
                        card_id=card.pk,
                        to_column_id=columns[step.target],
                        expected_version=card.version,
                    )
                elif step.action == "release":
                    month = f"{step.at:%Y.%m}"
                    releases_per_month[month] = releases_per_month.get(month, 0) + 1
                    self._release(
                        board=board,
                        actor=release_bot,
                        version=f"{month}.{releases_per_month[month]}",
                        columns=columns,
                        rework=rng.random() < 0.15,
                        rng=rng,
                    )

    def _plan(self, *, rng, start, now, days, cards) -> list[Step]:
        """Cards arrive over the window and walk the pipeline; releases ship what is staged."""
        steps: list[Step] = []
        order = 0
        for index in range(cards):
            # Most cards arrive over the whole window; the last fifth in the final fortnight,
            # so the board has work in every column today.
            window = days * 24 - 6 if index < cards * 0.8 else min(days, 14) * 24 - 6
            created = now - timedelta(hours=rng.uniform(6, window))
            steps.append(Step(created, order := order + 1, "create", index))
            if rng.random() < 0.12:
                continue  # still waiting in To Do
            at = created + timedelta(hours=rng.uniform(2, 96))
            for target in PIPELINE:
                if at >= now:
                    break
                steps.append(Step(at, order := order + 1, "move", index, target))
                at += timedelta(hours=rng.lognormvariate(2.8, 0.8))
        release_at = start + timedelta(days=2, hours=15)
        while release_at < now:
            steps.append(Step(release_at, order := order + 1, "release"))
            release_at += timedelta(days=rng.choice([1, 2, 2, 3, 4]), minutes=rng.randint(-90, 90))
        return [s for s in heapq.nsmallest(len(steps), steps) if s.at < now]

    def _release(self, *, board, actor, version, columns, rework, rng):
        """Deploy what is in Staging to production as CI would; now and then it fails first."""
        staged = list(Card.objects.filter(column_id=columns["Staging"], archived=False))
        if not staged:
            return
        now = clock.now()
        commits = [
            services.Commit(
                sha=f"{rng.getrandbits(40):010x}",
                timestamp=now - timedelta(hours=rng.uniform(4, 72)),
                message=f"{card.title} ({card.board.key}-{card.number})",
            )
            for card in staged
        ]
        numbers = [card.number for card in staged]
        if rng.random() < 0.12:  # a failed deployment, fixed and shipped some hours later
            services.deployment_record(
                actor=actor, board_id=board.pk, version=version, environment="production",
                status="failed", card_numbers=numbers, commits=commits,
            )  # fmt: skip
            now += timedelta(hours=rng.uniform(1, 8))
            version += "-fix"
        with clock.frozen_at(now):
            shipped = services.deployment_record(
                actor=actor, board_id=board.pk, version=version, environment="production",
                status="success", card_numbers=numbers, commits=commits,
            ).event  # fmt: skip
        fixed_at = now + timedelta(hours=rng.uniform(0.5, 4))
        if rework and fixed_at < timezone.now():
            # The release broke something: an incident it caused, a hotfix that ends it.
            with clock.frozen_at(now + timedelta(minutes=10)):
                incident = services.incident_open(
                    actor=actor, board_id=board.pk, title=f"Errors after {version}",
                    cause_deployment_id=shipped.pk,
                )  # fmt: skip
            with clock.frozen_at(fixed_at):
                hotfix = services.deployment_record(
                    actor=actor, board_id=board.pk, version=f"{version}-hotfix",
                    environment="production", status="success", card_numbers=[],
                    hotfix=True, fixes_incident_ids=[incident.pk],
                ).event  # fmt: skip
                services.incident_resolve(
                    actor=actor, incident_id=incident.pk, fixed_by_deployment_id=hotfix.pk
                )
        if rework:  # and one card goes back for more work
            card = Card.objects.get(pk=staged[0].pk)
            with clock.frozen_at(now + timedelta(minutes=20)):
                services.card_move(
                    actor=actor,
                    card_id=card.pk,
                    to_column_id=columns["In Progress"],
                    expected_version=card.version,
                )
