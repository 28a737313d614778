"""The event catalogue: one payload class per kind, read back exactly as the services write
it, and every reader of the log accounting for every kind."""

import dataclasses
import datetime
from collections import Counter
from collections.abc import Callable, Iterable
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from activity import clock, describe, events, live
from activity.events import EventKind
from activity.models import Event, Source
from boards import services
from boards.models import Role
from delivery import export, insights
from history import replay, timeline
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.sqlite


# --- What the services write --------------------------------------------------------------------


@pytest.fixture
def written(board, alice, bob, victor) -> dict[EventKind, list[Event]]:
    """Every event a history touching every service wrote on the board, by kind."""
    admin, editor = as_actor(alice), as_actor(bob)
    services.board_update(
        actor=admin, board_id=board.pk, name="Payments 2", description="Money in, money out"
    )
    services.column_create(actor=admin, board_id=board.pk, name="QA", stage="review")
    services.column_update(
        actor=admin, column_id=column(board, "In Review").pk, name="Review", wip_limit=3
    )
    services.column_update(actor=admin, column_id=column(board, "QA").pk, stage="staging")
    label = services.label_create(actor=admin, board_id=board.pk, name="bug", colour="#dc2626")
    services.label_update(actor=admin, label_id=label.pk, colour="#000000")
    card = make_card(board, title="Settle refunds")
    other = make_card(board, title="Refund the refunds")
    services.card_update(
        actor=editor,
        card_id=card.pk,
        expected_version=None,
        title="Settle refunds today",
        due_date=datetime.date(2026, 12, 24),
    )
    for to, moved in [("In Progress", card), ("In Progress", other), ("Staging", card)]:
        services.card_move(
            actor=editor, card_id=moved.pk, to_column_id=column(board, to).pk, expected_version=None
        )
    services.card_label_add(actor=editor, card_id=card.pk, label_id=label.pk)
    services.card_label_remove(actor=editor, card_id=card.pk, label_id=label.pk)
    services.card_assign(actor=editor, card_id=card.pk, user_ids=[alice.pk, bob.pk])
    services.comment_add(actor=editor, card_id=card.pk, body="Looks good")
    services.card_archive(actor=editor, card_id=other.pk)
    services.card_restore(actor=editor, card_id=other.pk)
    services.deployment_record(
        actor=editor,
        board_id=board.pk,
        version="v1.2.0",
        environment="production",
        status="success",
        commits=[services.Commit(sha="abc123", message=f"Fix {board.key}-{card.number}")],
        started_at=clock.now(),
    )
    cause = Event.objects.filter(board=board, kind=EventKind.DEPLOYMENT_RECORDED).latest("pk")
    incident = services.incident_open(
        actor=editor, board_id=board.pk, title="Checkout down", cause_deployment_id=cause.pk
    )
    services.deployment_roll_back(actor=editor, deployment_id=cause.pk)
    fix = services.deployment_record(
        actor=editor,
        board_id=board.pk,
        version="v1.2.1",
        environment="production",
        status="success",
        card_numbers=[],
        hotfix=True,
        fixes_incident_ids=[incident.pk],
    )
    services.incident_resolve(
        actor=editor, incident_id=incident.pk, fixed_by_deployment_id=fix.event.pk
    )
    services.membership_set(actor=admin, board_id=board.pk, user_id=victor.pk, role=Role.EDITOR)
    services.membership_remove(actor=admin, board_id=board.pk, user_id=victor.pk)
    by_kind: dict[EventKind, list[Event]] = {}
    for event in Event.objects.filter(board=board).order_by("seq"):
        by_kind.setdefault(EventKind(event.kind), []).append(event)
    return by_kind


def payload_classes() -> list[type[events.Payload]]:
    """Every payload class the catalogue module defines (those that name a kind)."""
    return [
        value
        for value in vars(events).values()
        if isinstance(value, type) and issubclass(value, events.Payload) and "kind" in vars(value)
    ]


def test_every_kind_has_exactly_one_payload_class():
    kinds = Counter(cls.kind for cls in payload_classes())
    assert {kind: n for kind, n in kinds.items() if n != 1} == {}
    assert set(kinds) == set(EventKind)
    assert set(events.CATALOGUE) == set(EventKind)
    assert all(events.CATALOGUE[kind].kind == kind for kind in EventKind)
    assert all(dataclasses.is_dataclass(cls) for cls in events.CATALOGUE.values())


@pytest.mark.django_db
def test_the_services_write_every_kind_and_each_payload_reads_back_as_written(written):
    assert set(EventKind) - set(written) == set()
    for kind, written_events in written.items():
        for event in written_events:
            typed = events.read(event.kind, event.payload)
            assert type(typed) is events.CATALOGUE[kind]
            assert typed.to_payload() == event.payload, f"event #{event.pk} ({kind})"
            assert events.read(kind, typed.to_payload()) == typed


@pytest.mark.django_db
def test_a_history_of_every_kind_replays_to_the_tables(board, written):
    verification = replay.board_verify(board_id=board.pk)
    assert verification.problems == []
    assert verification.events == sum(len(found) for found in written.values())


# --- Every reader accounts for every kind -------------------------------------------------------


def kinds_unaccounted(
    *,
    handled: Iterable[str],
    ignored: Iterable[str],
    kinds: Iterable[str] = tuple(EventKind),
) -> list[str]:
    """What a reader's declaration gets wrong: kinds it neither handles nor ignores, kinds it
    claims both ways, and kinds that do not exist."""
    handled, ignored, kinds = set(handled), set(ignored), set(kinds)
    return (
        [f"{kind} is neither handled nor ignored" for kind in sorted(kinds - handled - ignored)]
        + [f"{kind} is both handled and ignored" for kind in sorted(handled & ignored)]
        + [f"{kind} is not a kind of event" for kind in sorted((handled | ignored) - kinds)]
    )


def _rollups() -> tuple[Iterable[str], Iterable[str]]:
    from delivery import rollups

    read = getattr(rollups, "KINDS_READ", None)
    ignored = getattr(rollups, "KINDS_IGNORED", None)
    if read is None or ignored is None:
        pytest.skip("delivery.rollups does not declare KINDS_READ and KINDS_IGNORED yet")
    return read, ignored


# Each reader of the log: (the kinds it handles, the kinds it says it ignores).
READERS: dict[str, Callable[[], tuple[Iterable[str], Iterable[str]]]] = {
    "replay (history.replay.APPLY, IGNORED)": lambda: (replay.APPLY, replay.IGNORED),
    "live updates (activity.live.REDRAW)": lambda: (live.REDRAW, ()),
    "descriptions (activity.describe.KINDS_DESCRIBED)": lambda: (describe.KINDS_DESCRIBED, ()),
    "feed filters (history.timeline.FEED_KINDS)": lambda: (timeline.FEED_KINDS, ()),
    "insights (delivery.insights.KINDS_READ, KINDS_IGNORED)": lambda: (
        insights.KINDS_READ,
        insights.KINDS_IGNORED,
    ),
    "export (delivery.export.KINDS_READ, KINDS_IGNORED)": lambda: (
        export.KINDS_READ,
        export.KINDS_IGNORED,
    ),
    "rollups (delivery.rollups.KINDS_READ, KINDS_IGNORED)": _rollups,
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_handles_or_ignores_every_kind(reader):
    handled, ignored = READERS[reader]()
    assert kinds_unaccounted(handled=handled, ignored=ignored) == []


def test_the_check_names_a_kind_no_reader_was_taught():
    handled = set(EventKind) - {EventKind.COMMENT_ADDED}
    ignored = {EventKind.COMMENT_ADDED}
    assert kinds_unaccounted(handled=handled, ignored=ignored) == []
    # A kind added to the catalogue that this reader has not been taught:
    kinds = [*EventKind, "card.teleported"]
    assert kinds_unaccounted(handled=handled, ignored=ignored, kinds=kinds) == [
        "card.teleported is neither handled nor ignored"
    ]
    assert kinds_unaccounted(handled=handled, ignored=()) == [
        "comment.added is neither handled nor ignored"
    ]
    assert kinds_unaccounted(
        handled=handled, ignored={*ignored, EventKind.CARD_MOVED, "card.gone"}
    ) == ["card.moved is both handled and ignored", "card.gone is not a kind of event"]


@pytest.mark.django_db
def test_every_kind_has_its_own_sentence(written):
    for kind, found in written.items():
        sentence = describe.event_describe(found[-1])
        assert sentence != kind.replace(".", " "), kind
        assert kind in describe.KINDS_DESCRIBED


@pytest.mark.django_db
def test_live_updates_redraw_what_each_kind_declares(written):
    own_column = -1  # the column the writer says the card is in, which no payload names
    for kind, found in written.items():
        columns = live.event_message(found[-1], column_id=own_column)["columns"]
        match live.REDRAW[kind]:
            case live.Redraw.PAYLOAD:
                assert columns and own_column not in columns, kind
            case live.Redraw.CARD:
                assert columns == [own_column], kind
            case live.Redraw.BOARD:
                assert columns is None, kind
            case live.Redraw.NOTHING:
                assert columns == [], kind


def test_every_kind_can_be_chosen_in_the_feed_filter():
    for kind in EventKind:
        assert timeline.FeedFilter.parse({"kind": kind.value}).kind == kind.value
    assert timeline.FeedFilter.parse({"kind": "card.teleported"}).kind == ""


# --- Payloads that do not fit -------------------------------------------------------------------

PLACE: events.CardPlace = {"column_id": 1, "column": "To Do", "stage": "todo", "rank": "m"}


def test_a_payload_without_a_required_key_is_malformed_and_names_it():
    stored = events.CardMoved(from_=PLACE, to=PLACE, ref="PAY-1").to_payload()
    assert events.read(EventKind.CARD_MOVED, stored) == events.CardMoved(
        from_=PLACE, to=PLACE, ref="PAY-1"
    )
    del stored["to"]
    with pytest.raises(events.MalformedEvent, match=r"card\.moved payload lacks to$"):
        events.read(EventKind.CARD_MOVED, stored)
    with pytest.raises(events.MalformedEvent, match="lacks column_id, column, stage, rank"):
        events.read(EventKind.CARD_ARCHIVED, {"ref": "PAY-1"})


def test_a_payload_that_is_not_an_object_is_malformed():
    with pytest.raises(events.MalformedEvent, match="must be a JSON object"):
        events.read(EventKind.CARD_MOVED, ["from", "to"])


def test_an_unknown_kind_is_malformed():
    with pytest.raises(events.MalformedEvent, match=r"'card\.teleported' is not a kind"):
        events.read("card.teleported", {})


def test_keys_old_events_lack_read_as_their_defaults():
    moved = events.read(EventKind.CARD_MOVED, {"from": PLACE, "to": PLACE})
    assert isinstance(moved, events.CardMoved)
    assert (moved.ref, moved.version, moved.rebalanced, moved.deployment_id) == ("", None, {}, None)
    assert "rebalanced" not in moved.to_payload()


def forge(board, card, *, kind: str, payload) -> Event:
    """An event written past the services (the chain still takes it in)."""
    with transaction.atomic():
        return Event.objects.create(
            occurred_at=clock.now(),
            actor_name="mallory",
            source=Source.SYSTEM,
            board=board,
            card=card,
            kind=kind,
            payload=payload,
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        (EventKind.CARD_MOVED, {"from": PLACE}, "a card.moved payload lacks to"),
        (EventKind.CARD_MOVED, {"from": PLACE, "to": "Done"}, "does not fit the board as replayed"),
        ("card.teleported", {}, "'card.teleported' is not a kind of event"),
    ],
)
def test_verification_reports_a_malformed_event_instead_of_crashing(board, kind, payload, reason):
    card = make_card(board)
    bad = forge(board, card, kind=kind, payload=payload)
    make_card(board, title="after it")
    verification = replay.board_verify(board_id=board.pk)
    assert not verification.ok
    assert verification.chain == []
    [problem] = verification.problems
    assert problem.startswith(f"replay: event #{bad.pk} (seq {bad.seq}) cannot be replayed")
    assert reason in problem
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_activity", "--board", board.key, stdout=out)
    assert f"event #{bad.pk}" in out.getvalue() and reason in out.getvalue()


@pytest.mark.django_db
def test_a_malformed_event_is_still_described_and_redraws_the_board(board):
    bad = forge(board, make_card(board), kind=EventKind.CARD_MOVED, payload={"from": PLACE})
    assert describe.event_describe(bad) == "card moved"
    assert live.event_message(bad)["columns"] is None
