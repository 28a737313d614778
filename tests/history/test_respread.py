"""A move that re-spreads a crowded column writes a small event (`respread`), and replay
recomputes the column's ranks from it; events written before, with a map of the column's new
ranks (`rebalanced`), still replay as they were written."""

import json
import types

import pytest

from activity import events
from activity.events import EventKind
from activity.models import Event
from boards import ranking, services
from boards.models import Card
from boards.services import moves
from tests.conftest import as_actor, column, make_card
from tests.history.test_replay import assert_replay_equals_present

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite]


def crowd_one_gap(board, bob, *, cards: int, moves_: int) -> None:
    """Moves cards again and again into the gap under the top card, so its keys grow long."""
    top = make_card(board, title="top")
    rest = [make_card(board, title=f"card {i}") for i in range(cards)]
    movers = rest[:2]
    for i in range(moves_):
        services.card_move(
            actor=as_actor(bob),
            card_id=movers[i % 2].pk,
            to_column_id=column(board, "To Do").pk,
            expected_version=None,
            after_id=top.pk,
        )


def respreads(board):
    return Event.objects.filter(board=board, kind=EventKind.CARD_MOVED, payload__respread=True)


@pytest.mark.parametrize("cards", [5, 60])
def test_a_re_spread_is_one_small_event_that_replays_to_the_same_ranks(
    board, bob, monkeypatch, cards
):
    monkeypatch.setattr(ranking, "REBALANCE_AT", 5)  # sooner than the real 48 characters
    crowd_one_gap(board, bob, cards=cards, moves_=40)
    written = list(respreads(board))
    assert written, "no move re-spread the column"
    for event in written:
        assert "rebalanced" not in event.payload
        # The same few hundred bytes however long the column: no map of its cards.
        assert len(json.dumps(event.payload)) < 1000
    todo = column(board, "To Do")
    ranks = list(Card.objects.filter(column=todo, archived=False).values_list("rank", flat=True))
    assert len(set(ranks)) == len(ranks)
    assert_replay_equals_present(board, use_snapshots=False)


def test_an_archived_card_in_the_column_keeps_its_rank_through_a_re_spread(board, bob, monkeypatch):
    monkeypatch.setattr(ranking, "REBALANCE_AT", 5)
    gone = make_card(board, title="archived before the crowding")
    services.card_archive(actor=as_actor(bob), card_id=gone.pk, expected_version=None)
    crowd_one_gap(board, bob, cards=8, moves_=40)
    assert respreads(board).exists()
    assert_replay_equals_present(board, use_snapshots=False)


def test_events_written_with_a_map_of_new_ranks_still_replay(board, bob, monkeypatch):
    """Before `respread`, a re-spreading move stored {card id: new rank} of the column's other
    cards. Such events are in logs for ever: written here as then, they replay the same."""
    monkeypatch.setattr(ranking, "REBALANCE_AT", 5)

    def card_moved_as_before(**fields):
        if fields.pop("respread", False):
            place = fields["to"]
            others = Card.objects.filter(column_id=place["column_id"], archived=False)
            number = int(fields["ref"].rsplit("-", 1)[1])
            fields["rebalanced"] = {
                str(pk): rank
                for pk, rank in others.exclude(number=number).values_list("pk", "rank")
            }
        return events.CardMoved(**fields)

    legacy = types.SimpleNamespace(**{**vars(events), "CardMoved": card_moved_as_before})
    monkeypatch.setattr(moves, "events", legacy)
    crowd_one_gap(board, bob, cards=10, moves_=40)
    old = Event.objects.filter(
        board=board, kind=EventKind.CARD_MOVED, payload__has_key="rebalanced"
    )
    assert old.exists()
    assert not respreads(board).exists()
    assert_replay_equals_present(board, use_snapshots=False)
