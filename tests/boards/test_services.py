"""The services: one event per change, none on refusal, and the rules they guard."""

import datetime

import pytest
from django.core.exceptions import ValidationError

from activity.events import EventKind
from activity.models import Event
from boards import services
from boards.errors import ConflictError, ForbiddenError, NotFoundError, WipLimitError
from boards.models import Card, Column, Label, Membership, Role, Stage
from tests.conftest import as_actor, column, column_titles, make_card, make_user

pytestmark = [pytest.mark.sqlite, pytest.mark.django_db]


def snapshot_state():
    """Everything a service could change, to prove a refused call changed nothing."""
    return (
        list(Card.objects.order_by("pk").values()),
        list(Card.labels.through.objects.order_by("pk").values()),
        list(Card.assignees.through.objects.order_by("pk").values()),
        list(Column.objects.order_by("pk").values()),
        list(Label.objects.order_by("pk").values()),
        list(Membership.objects.order_by("pk").values()),
        Event.objects.count(),
    )


def _label(board, actor):
    return services.label_create(actor=actor, board_id=board.pk, name="bug", colour="#dc2626")


# Each entry: (name, expected kind, call(board, card, actor, other_user) -> None)
SERVICE_CALLS = [
    ("board_update", EventKind.BOARD_UPDATED,
     lambda b, c, a, u: services.board_update(actor=a, board_id=b.pk, name="Payments 2")),
    ("column_create", EventKind.COLUMN_CREATED,
     lambda b, c, a, u: services.column_create(actor=a, board_id=b.pk, name="QA", stage="review")),
    ("column_update", EventKind.COLUMN_UPDATED,
     lambda b, c, a, u: services.column_update(
         actor=a, column_id=column(b, "In Review").pk, wip_limit=3)),
    ("membership_set", EventKind.MEMBERSHIP_SET,
     lambda b, c, a, u: services.membership_set(
         actor=a, board_id=b.pk, user_id=u.pk, role="viewer")),
    ("membership_remove", EventKind.MEMBERSHIP_REMOVED,
     lambda b, c, a, u: services.membership_remove(
         actor=a, board_id=b.pk, user_id=b.memberships.get(role="editor").user_id)),
    ("label_create", EventKind.LABEL_CREATED, lambda b, c, a, u: _label(b, a)),
    ("label_update", EventKind.LABEL_UPDATED,
     lambda b, c, a, u: services.label_update(
         actor=a, label_id=Label.objects.get(board=b, name="seed").pk, colour="#000000")),
    ("card_create", EventKind.CARD_CREATED,
     lambda b, c, a, u: services.card_create(actor=a, board_id=b.pk, title="New")),
    ("card_update", EventKind.CARD_UPDATED,
     lambda b, c, a, u: services.card_update(
         actor=a, card_id=c.pk, expected_version=c.version, title="Renamed",
         due_date=datetime.date(2026, 12, 24))),
    ("card_move", EventKind.CARD_MOVED,
     lambda b, c, a, u: services.card_move(
         actor=a, card_id=c.pk, to_column_id=column(b, "In Progress").pk,
         expected_version=c.version)),
    ("card_archive", EventKind.CARD_ARCHIVED,
     lambda b, c, a, u: services.card_archive(actor=a, card_id=c.pk)),
    ("card_label_add", EventKind.CARD_LABELLED,
     lambda b, c, a, u: services.card_label_add(
         actor=a, card_id=c.pk, label_id=Label.objects.get(board=b, name="seed").pk)),
    ("card_assign", EventKind.CARD_ASSIGNED,
     lambda b, c, a, u: services.card_assign(
         actor=a, card_id=c.pk, user_ids=[b.memberships.get(role="editor").user_id])),
    ("comment_add", EventKind.COMMENT_ADDED,
     lambda b, c, a, u: services.comment_add(actor=a, card_id=c.pk, body="Looks good")),
]  # fmt: skip


@pytest.fixture
def seeded(board, alice):
    """The board with one card and one label, as every service call above expects."""
    services.label_create(actor=as_actor(alice), board_id=board.pk, name="seed")
    card = make_card(board, title="Settle refunds")
    return board, card


@pytest.mark.parametrize(("name", "kind", "call"), SERVICE_CALLS, ids=[c[0] for c in SERVICE_CALLS])
def test_each_service_writes_exactly_one_event(seeded, alice, mallory, name, kind, call):
    board, card = seeded
    last = Event.objects.latest("pk").pk
    call(board, card, as_actor(alice), mallory)
    new = list(Event.objects.filter(pk__gt=last))
    assert [e.kind for e in new] == [kind]
    assert new[0].board_id == board.pk
    assert new[0].actor_name == "alice"
    assert new[0].source == "web"


def test_the_remaining_card_services_write_one_event_each(seeded, alice):
    board, card = seeded
    actor = as_actor(alice)
    label = Label.objects.get(board=board, name="seed")
    services.card_label_add(actor=actor, card_id=card.pk, label_id=label.pk)
    services.card_archive(actor=actor, card_id=card.pk)
    last = Event.objects.latest("pk").pk
    services.card_restore(actor=actor, card_id=card.pk)
    services.card_label_remove(actor=actor, card_id=card.pk, label_id=label.pk)
    kinds = list(Event.objects.filter(pk__gt=last).values_list("kind", flat=True))
    assert kinds == [EventKind.CARD_RESTORED, EventKind.CARD_UNLABELLED]


def test_board_create_makes_the_five_pipeline_columns_and_one_event(alice):
    board = services.board_create(actor=as_actor(alice), name="Checkout", key="chk")
    assert board.key == "CHK"
    assert [(c.name, c.stage) for c in board.columns.order_by("position")] == [
        ("To Do", Stage.TODO),
        ("In Progress", Stage.IN_PROGRESS),
        ("In Review", Stage.REVIEW),
        ("Staging", Stage.STAGING),
        ("Deployed", Stage.DEPLOYED),
    ]
    assert board.memberships.get().role == Role.ADMIN
    (event,) = Event.objects.filter(board=board)
    assert event.kind == EventKind.BOARD_CREATED
    assert len(event.payload["columns"]) == 5


def test_cards_are_numbered_per_board(board, alice):
    other = services.board_create(actor=as_actor(alice), name="Search", key="SRCH")
    first = make_card(board)
    make_card(other)
    second = make_card(board)
    assert (first.ref, second.ref) == ("PAY-1", "PAY-2")
    assert Card.objects.get(board=other).ref == "SRCH-1"


def test_a_failing_service_writes_no_event_and_changes_nothing(seeded, alice):
    board, card = seeded
    before = snapshot_state()
    with pytest.raises(ValidationError):
        services.card_move(
            actor=as_actor(alice),
            card_id=card.pk,
            to_column_id=column(board, "Staging").pk,
            expected_version=card.version,
            after_id=999_999,
        )
    assert snapshot_state() == before


@pytest.mark.parametrize(("name", "kind", "call"), SERVICE_CALLS, ids=[c[0] for c in SERVICE_CALLS])
def test_a_viewer_cannot_change_anything(seeded, victor, mallory, name, kind, call):
    board, card = seeded
    before = snapshot_state()
    with pytest.raises(ForbiddenError):
        call(board, card, as_actor(victor), mallory)
    assert snapshot_state() == before


@pytest.mark.parametrize(("name", "kind", "call"), SERVICE_CALLS, ids=[c[0] for c in SERVICE_CALLS])
def test_a_non_member_is_told_the_board_does_not_exist(seeded, mallory, bob, name, kind, call):
    board, card = seeded
    before = snapshot_state()
    with pytest.raises(NotFoundError):
        call(board, card, as_actor(mallory), bob)
    assert snapshot_state() == before


def test_an_editor_cannot_administer_the_board(seeded, bob):
    board, _ = seeded
    with pytest.raises(ForbiddenError):
        services.column_create(actor=as_actor(bob), board_id=board.pk, name="QA", stage="review")


@pytest.mark.parametrize(
    ("title", "message"),
    [
        ("", "cannot be empty"),
        ("   \n\t ", "cannot be empty"),
        ("x" * 10_000, "At most 200 characters"),
        ("x" * 201, "At most 200 characters"),
    ],
)
def test_bad_titles_are_refused_with_a_clear_message(seeded, bob, title, message):
    board, card = seeded
    before = snapshot_state()
    with pytest.raises(ValidationError) as create_error:
        services.card_create(actor=as_actor(bob), board_id=board.pk, title=title)
    with pytest.raises(ValidationError) as update_error:
        services.card_update(
            actor=as_actor(bob), card_id=card.pk, expected_version=card.version, title=title
        )
    assert message in create_error.value.message_dict["title"][0]
    assert message in update_error.value.message_dict["title"][0]
    assert snapshot_state() == before


def test_a_title_of_exactly_200_characters_is_accepted(seeded, bob):
    board, _ = seeded
    card = services.card_create(actor=as_actor(bob), board_id=board.pk, title="y" * 200)
    assert len(Card.objects.get(pk=card.pk).title) == 200


def test_moving_to_an_unknown_column_or_one_of_another_board_is_refused(seeded, alice, bob):
    _board, card = seeded
    other = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    before = snapshot_state()
    for to_column_id in (999_999, column(other, "Staging").pk):
        with pytest.raises(ValidationError) as error:
            services.card_move(
                actor=as_actor(bob),
                card_id=card.pk,
                to_column_id=to_column_id,
                expected_version=card.version,
            )
        assert "no such column" in error.value.message_dict["to_column"][0]
    assert snapshot_state() == before


def test_creating_in_a_column_of_another_board_is_refused(seeded, alice):
    board, _ = seeded
    other = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    with pytest.raises(ValidationError):
        services.card_create(
            actor=as_actor(alice),
            board_id=board.pk,
            column_id=column(other, "To Do").pk,
            title="Wrong board",
        )
    assert not Card.objects.filter(title="Wrong board").exists()


def test_a_stale_version_gets_a_conflict_and_changes_nothing(seeded, alice, bob):
    board, card = seeded
    seen = card.version
    services.card_move(
        actor=as_actor(alice),
        card_id=card.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=seen,
    )
    before = snapshot_state()
    with pytest.raises(ConflictError) as conflict:
        services.card_move(
            actor=as_actor(bob),
            card_id=card.pk,
            to_column_id=column(board, "In Review").pk,
            expected_version=seen,
        )
    with pytest.raises(ConflictError):
        services.card_update(actor=as_actor(bob), card_id=card.pk, expected_version=seen, title="x")
    assert conflict.value.card.column.name == "Staging"
    assert snapshot_state() == before
    assert Event.objects.filter(card=card, kind=EventKind.CARD_MOVED).count() == 1


def test_moves_place_cards_exactly_where_asked(seeded, bob):
    board, _ = seeded
    a, b, c = (make_card(board, title=t) for t in "abc")
    assert column_titles(board, "To Do") == ["Settle refunds", "a", "b", "c"]
    actor = as_actor(bob)
    c = services.card_move(
        actor=actor, card_id=c.pk, to_column_id=c.column_id, expected_version=c.version
    ).card
    assert column_titles(board, "To Do") == ["c", "Settle refunds", "a", "b"]
    services.card_move(
        actor=actor,
        card_id=c.pk,
        to_column_id=c.column_id,
        expected_version=c.version,
        after_id=a.pk,
    )
    assert column_titles(board, "To Do") == ["Settle refunds", "a", "c", "b"]
    a.refresh_from_db()
    services.card_move(
        actor=actor,
        card_id=a.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=a.version,
    )
    b.refresh_from_db()
    services.card_move(
        actor=actor,
        card_id=b.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=b.version,
        before_id=a.pk,
    )
    assert column_titles(board, "Staging") == ["b", "a"]
    assert column_titles(board, "To Do") == ["Settle refunds", "c"]


def test_a_move_writes_only_the_moved_card(seeded, bob):
    board, _ = seeded
    cards = [make_card(board, title=str(i)) for i in range(5)]
    untouched = {c.pk: (c.rank, c.version) for c in cards[:-1]}
    last = cards[-1]
    services.card_move(
        actor=as_actor(bob),
        card_id=last.pk,
        to_column_id=last.column_id,
        expected_version=last.version,
        after_id=cards[1].pk,
    )
    for card in Card.objects.filter(pk__in=untouched):
        assert (card.rank, card.version) == untouched[card.pk]


def test_moving_a_card_to_where_it_already_is_writes_nothing(seeded, bob):
    board, card = seeded
    other = make_card(board, title="second")
    before = snapshot_state()
    same = services.card_move(
        actor=as_actor(bob), card_id=card.pk, to_column_id=card.column_id, expected_version=1
    )
    assert not same.moved
    services.card_move(
        actor=as_actor(bob),
        card_id=other.pk,
        to_column_id=other.column_id,
        expected_version=other.version,
        after_id=card.pk,
    )
    assert same.card.version == card.version
    assert snapshot_state() == before


def test_a_crowded_gap_is_rebalanced_and_order_stays_strict(seeded, bob):
    board, first = seeded
    make_card(board, title="last")
    actor = as_actor(bob)
    expected = ["Settle refunds", "last"]
    cards = [make_card(board, title=f"n{i}") for i in range(320)]
    # Move each right after the first card: the same gap halves again and again.
    for card in cards:
        services.card_move(
            actor=actor,
            card_id=card.pk,
            to_column_id=card.column_id,
            expected_version=card.version,
            after_id=first.pk,
        )
        expected.insert(1, card.title)
    assert column_titles(board, "To Do") == expected
    ranks = list(Card.objects.filter(board=board).values_list("rank", flat=True))
    assert len(set(ranks)) == len(ranks)
    assert max(len(r) for r in ranks) <= 49
    rebalances = Event.objects.filter(kind=EventKind.CARD_MOVED, payload__has_key="respread")
    assert rebalances.exists()


def test_a_blocking_wip_limit_refuses_the_extra_card_with_a_clear_message(seeded, alice, bob):
    board, card = seeded
    review = column(board, "In Review")
    services.column_update(actor=as_actor(alice), column_id=review.pk, wip_limit=1, wip_blocks=True)
    other = make_card(board, title="other")
    services.card_move(
        actor=as_actor(bob), card_id=card.pk, to_column_id=review.pk, expected_version=card.version
    )
    with pytest.raises(WipLimitError) as refused:
        services.card_move(
            actor=as_actor(bob),
            card_id=other.pk,
            to_column_id=review.pk,
            expected_version=other.version,
        )
    assert "WIP limit of 1" in refused.value.message
    assert column_titles(board, "In Review") == ["Settle refunds"]


def test_a_warning_wip_limit_still_lets_the_card_in(seeded, alice, bob):
    board, card = seeded
    review = column(board, "In Review")
    services.column_update(actor=as_actor(alice), column_id=review.pk, wip_limit=1)
    for c in (card, make_card(board, title="other")):
        services.card_move(
            actor=as_actor(bob), card_id=c.pk, to_column_id=review.pk, expected_version=c.version
        )
    assert len(column_titles(board, "In Review")) == 2


def test_archived_cards_leave_the_board_and_come_back_at_the_bottom(seeded, bob):
    board, card = seeded
    make_card(board, title="second")
    services.card_archive(actor=as_actor(bob), card_id=card.pk)
    assert column_titles(board, "To Do") == ["second"]
    services.card_restore(actor=as_actor(bob), card_id=card.pk)
    assert column_titles(board, "To Do") == ["second", "Settle refunds"]
    assert Card.objects.filter(pk=card.pk).exists()


def test_assignees_must_be_members(seeded, bob, mallory):
    _board, card = seeded
    with pytest.raises(ValidationError):
        services.card_assign(actor=as_actor(bob), card_id=card.pk, user_ids=[mallory.pk])
    services.card_assign(actor=as_actor(bob), card_id=card.pk, user_ids=[bob.pk])
    assert list(card.assignees.values_list("username", flat=True)) == ["bob"]


def test_labels_of_another_board_cannot_be_used(seeded, alice):
    _board, card = seeded
    other = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    foreign = services.label_create(actor=as_actor(alice), board_id=other.pk, name="bug")
    with pytest.raises(ValidationError):
        services.card_label_add(actor=as_actor(alice), card_id=card.pk, label_id=foreign.pk)


def test_the_last_admin_cannot_leave(board, alice):
    with pytest.raises(ValidationError):
        services.membership_remove(actor=as_actor(alice), board_id=board.pk, user_id=alice.pk)


def test_duplicate_board_keys_and_bad_keys_are_refused(board, alice):
    for key, message in [("PAY", "taken"), ("p", "capital letters"), ("TOO-LONG!", "capital")]:
        with pytest.raises(ValidationError) as error:
            services.board_create(actor=as_actor(alice), name="X", key=key)
        assert message in str(error.value)


def test_staff_act_as_admins_on_every_board(board):
    staff = make_user("root", is_staff=True)
    services.column_create(actor=as_actor(staff), board_id=board.pk, name="QA", stage="review")
    assert board.columns.filter(name="QA").exists()


def test_the_last_admin_cannot_demote_themselves(board, alice):
    with pytest.raises(ValidationError):
        services.membership_set(
            actor=as_actor(alice), board_id=board.pk, user_id=alice.pk, role="editor"
        )
    assert board.memberships.get(user=alice).role == Role.ADMIN


def test_restoring_into_a_full_blocking_column_is_refused(seeded, alice, bob):
    board, card = seeded
    services.card_archive(actor=as_actor(bob), card_id=card.pk)
    services.column_update(
        actor=as_actor(alice), column_id=card.column_id, wip_limit=1, wip_blocks=True
    )
    make_card(board, title="fills the column")
    with pytest.raises(WipLimitError):
        services.card_restore(actor=as_actor(bob), card_id=card.pk)
    assert Card.objects.get(pk=card.pk).archived


@pytest.mark.parametrize("bad", ["7", 7.0, None, True, -1, 2**70, [1]])
def test_ids_of_the_wrong_type_are_a_validation_error_not_a_crash(seeded, bob, bad):
    _board, card = seeded
    before = snapshot_state()
    calls = [
        lambda: services.card_move(
            actor=as_actor(bob), card_id=card.pk, to_column_id=bad, expected_version=card.version
        ),
        lambda: services.card_move(
            actor=as_actor(bob),
            card_id=card.pk,
            to_column_id=card.column_id,
            expected_version=card.version,
            after_id=bad if bad is not None else "x",  # type: ignore[arg-type]  # wrong on purpose
        ),
        lambda: services.card_assign(actor=as_actor(bob), card_id=card.pk, user_ids=[bad]),
        lambda: services.card_label_add(actor=as_actor(bob), card_id=card.pk, label_id=bad),
    ]
    for call in calls:
        with pytest.raises(ValidationError):
            call()
    with pytest.raises(NotFoundError):
        services.card_archive(actor=as_actor(bob), card_id=bad)
    assert snapshot_state() == before
