"""Hostile input, property-based: every form, the views that take them, and the main services.

Whatever arrives, the answer is never a 500 (nor an unexpected exception from a service), a
refusal writes nothing (events and rows unchanged), and it says why in words. The examples
are derandomized so CI is repeatable; FUZZ_RANDOM=1 FUZZ_EXAMPLES=n explores further.
"""

import datetime
import os
from dataclasses import astuple
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity.log import Actor
from activity.models import Event, Source
from boards import services
from boards.errors import FluxError
from boards.forms import (
    CardCreateForm,
    CardEditForm,
    CommentForm,
    FilterForm,
    MoveForm,
    TokenForm,
)
from boards.models import ApiToken, Board, Card, Comment, Label
from boards.queries import CardFilter
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text a browser can send (any code point but lone surrogates, which UTF-8 cannot carry),
# with the awkward ones made likely: NUL, controls, RTL marks, markup, very long runs.
nasty = st.sampled_from(
    ["\x00", "\r\n", "\u202e", "<script>", "' OR 1=1 --", "%00", "\ufeff", " ", "9" * 30]
)
text = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=60),
    st.lists(st.one_of(nasty, st.text(max_size=5)), max_size=8).map("".join),
    st.builds(lambda c, n: c * n, st.sampled_from("xé🙂\x00 "), st.integers(190, 21_000)),
)
number_text = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "1e3", "0x10", " 1", "1.0", "-0", "NaN", "١٢"]),
    text,
)
value = st.one_of(text, number_text)
multi = st.lists(value, max_size=4)


def form_data(fields: dict) -> st.SearchStrategy[dict]:
    """A dict over the form's field names (some missing, some extra), each text or a list."""
    return st.fixed_dictionaries(
        {},
        optional={name: (multi if many else value) for name, many in fields.items()}
        | {"extra": value},
    )


def as_querydict(data: dict):
    from django.http import QueryDict

    qd = QueryDict(mutable=True)
    for key, item in data.items():
        qd.setlist(key, item if isinstance(item, list) else [item])
    return qd


def assert_refusal_is_explained(form) -> None:
    assert form.errors
    for messages in form.errors.values():
        assert all(isinstance(m, str) and m.strip() for m in messages)


# --- the forms on their own --------------------------------------------------------------------

FIELDS = {
    FilterForm: {"q": False, "label": False, "assignee": False, "release": False},
    MoveForm: {"to_column": False, "after": False, "before": False, "version": False},
    CardCreateForm: {"title": False},
    CardEditForm: {
        "version": False,
        "title": False,
        "description": False,
        "due_date": False,
        "labels": True,
        "assignees": True,
    },
    CommentForm: {"body": False},
    TokenForm: {"name": False, "role": False, "boards": True},
}


def test_every_form_of_the_app_is_fuzzed():
    import inspect

    from boards import forms

    defined = {
        obj
        for obj in vars(forms).values()
        if inspect.isclass(obj)
        and issubclass(obj, forms.forms.Form)
        and obj.__module__ == forms.__name__
    }
    assert defined == set(FIELDS)


@pytest.mark.parametrize("form_class", list(FIELDS), ids=lambda f: f.__name__)
def test_any_input_to_a_form_is_valid_or_refused_with_a_message(form_class, board, bob):
    @FUZZ
    @given(data=form_data(FIELDS[form_class]))
    def check(data):
        kwargs: dict[str, Any] = {}
        if form_class is CardEditForm:
            kwargs = {"labels": Label.objects.filter(board=board), "members": [bob]}
        if form_class is TokenForm:
            kwargs = {"actor": as_actor(bob)}
        form = form_class(as_querydict(data), **kwargs)
        if form.is_valid():
            if form_class is FilterForm:
                form.card_filter()
            for name, cleaned in form.cleaned_data.items():
                if isinstance(cleaned, str):
                    assert "\x00" not in cleaned, name
        else:
            assert_refusal_is_explained(form)

    check()


def test_the_filter_never_fails_the_page(board, bob):
    """Valid input is the filter asked for; anything invalid is dropped, not an error; and
    whatever comes out runs as a query."""
    cards = Card.objects.filter(board=board)

    @FUZZ
    @given(data=form_data(FIELDS[FilterForm]))
    def check(data):
        form = FilterForm(as_querydict(data))
        chosen = form.card_filter()
        if form.is_valid():
            asked = form.cleaned_data
            assert chosen == CardFilter(
                text=asked["q"],
                label=asked["label"],
                assignee=asked["assignee"],
                release=asked["release"],
            )
        else:
            assert chosen == CardFilter()
        assert not any("\x00" in value for value in astuple(chosen))  # PostgreSQL refuses NUL
        list(chosen.apply(cards))

    check()


# --- the forms through the views ---------------------------------------------------------------


def counts() -> tuple[int, ...]:
    return (
        Event.objects.count(),
        Card.objects.count(),
        Comment.objects.count(),
        Label.objects.count(),
        ApiToken.objects.count(),
        Board.objects.count(),
    )


@pytest.fixture
def editor(board, bob) -> Client:
    client = Client()
    client.force_login(bob)
    return client


def post(client: Client, url: str, data: dict, *, htmx: bool):
    return client.post(url, as_querydict(data), headers={"HX-Request": "true"} if htmx else {})


def assert_answer(response, before: tuple[int, ...], *, refusals: set[int]) -> None:
    """No 500; a refusal (4xx) writes nothing and says something."""
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert response.status_code in refusals, response.status_code
        assert counts() == before
        assert response.content.strip()


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
def test_any_new_card_form_is_created_or_refused(editor, board, htmx):
    url = f"/b/PAY/columns/{column(board, 'To Do').pk}/cards"

    @FUZZ
    @given(data=form_data(FIELDS[CardCreateForm]))
    def check(data):
        before = counts()
        response = post(editor, url, data, htmx=htmx)
        assert_answer(response, before, refusals={409, 422})
        if counts() != before:  # made: exactly one card, one event
            assert counts()[:2] == (before[0] + 1, before[1] + 1)

    check()


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
def test_any_card_edit_is_saved_or_refused(editor, board, bob, htmx):
    card = make_card(board, title="Edit me")
    label = services.label_create(actor=as_actor(bob), board_id=board.pk, name="bug")
    ids = st.sampled_from([str(label.pk), str(bob.pk), "0", "-1", "x", str(2**64)])

    @FUZZ
    @given(
        data=form_data(FIELDS[CardEditForm]),
        version=st.sampled_from(["current", "stale", None]),
        labels=st.lists(ids, max_size=3),
    )
    def check(data, version, labels):
        current = Card.objects.get(pk=card.pk).version
        if version:
            data["version"] = str(current if version == "current" else current + 5)
        data["labels"] = labels
        before = counts()
        response = post(editor, f"/b/PAY/cards/{card.number}/", data, htmx=htmx)
        assert_answer(response, before, refusals={409, 422})
        if response.status_code >= 400:
            assert Card.objects.get(pk=card.pk).version == current

    check()


def test_any_move_is_made_or_refused(editor, board, alice):
    other = services.board_create(actor=as_actor(alice), name="Other", key="OTH")
    cards = [make_card(board, title=f"Card {n}") for n in range(3)]
    other_column = other.columns.first()
    assert other_column is not None
    columns = [str(c.pk) for c in board.columns.all()] + [str(other_column.pk)]
    refs = st.sampled_from([str(c.pk) for c in cards] + columns + ["0", "", "x", str(2**63)])

    @FUZZ
    @given(
        card=st.sampled_from(cards),
        to_column=st.one_of(st.sampled_from(columns), value),
        after=st.one_of(refs, value),
        before_=st.one_of(refs, value),
        stale=st.booleans(),
    )
    def check(card, to_column, after, before_, stale):
        version = Card.objects.get(pk=card.pk).version + (3 if stale else 0)
        data = {"to_column": to_column, "after": after, "before": before_, "version": version}
        before = counts()
        response = post(editor, f"/b/PAY/cards/{card.number}/move", data, htmx=True)
        assert_answer(response, before, refusals={409, 422})

    check()


def test_any_comment_is_added_or_refused(editor, board):
    card = make_card(board, title="Talk")

    @FUZZ
    @given(data=form_data(FIELDS[CommentForm]))
    def check(data):
        before = counts()
        response = post(editor, f"/b/PAY/cards/{card.number}/comments", data, htmx=True)
        assert_answer(response, before, refusals={422})

    check()


def test_any_token_form_makes_a_token_or_is_refused(editor, board):
    @FUZZ
    @given(data=form_data(FIELDS[TokenForm]), revoke=st.one_of(st.none(), number_text))
    def check(data, revoke):
        if revoke is not None:
            data["revoke"] = revoke
        before = counts()
        response = post(editor, "/settings/tokens/", data, htmx=False)
        assert_answer(response, before, refusals={403, 404, 422})

    check()


def test_any_board_filter_renders_the_board(editor, board):
    @FUZZ
    @given(data=form_data(FIELDS[FilterForm]), htmx=st.booleans())
    def check(data, htmx):
        before = counts()
        response = editor.get(
            "/b/PAY/", as_querydict(data), headers={"HX-Request": "true"} if htmx else {}
        )
        assert response.status_code == 200
        assert counts() == before

    check()


# --- the services, called directly (as the admin and the API do) -------------------------------

REFUSALS = (ValidationError, FluxError)


def refused_or_done(call) -> None:
    """Run a service: it succeeds or refuses with a message, and a refusal writes nothing."""
    before = counts()
    try:
        call()
    except REFUSALS as refusal:
        explained = str(refusal).strip()
        assert counts() == before
        assert explained


def test_the_card_services_take_any_text(board, bob):
    actor = as_actor(bob)
    card = make_card(board, title="Target")

    @FUZZ
    @given(
        title=text,
        description=text,
        body=text,
        due=st.one_of(st.none(), st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31))),
    )
    def check(title, description, body, due):
        refused_or_done(
            lambda: services.card_create(
                actor=actor, board_id=board.pk, title=title, description=description, due_date=due
            )
        )
        current = Card.objects.get(pk=card.pk)
        refused_or_done(
            lambda: services.card_details_set(
                actor=actor,
                card_id=card.pk,
                expected_version=current.version,
                title=title,
                description=description,
                due_date=due,
                label_ids=[],
                assignee_ids=[],
            )
        )
        refused_or_done(lambda: services.comment_add(actor=actor, card_id=card.pk, body=body))

    check()


def test_the_board_and_label_services_take_any_text(board, alice):
    actor = as_actor(alice)

    @FUZZ
    @given(
        name=text,
        key=st.one_of(text, st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,12}", fullmatch=True)),
        colour=st.one_of(text, st.from_regex(r"#[0-9a-fA-F]{3,8}", fullmatch=True)),
        kind=st.one_of(st.sampled_from(["general", "release"]), text),
    )
    def check(name, key, colour, kind):
        refused_or_done(lambda: services.board_create(actor=actor, name=name, key=key))
        refused_or_done(
            lambda: services.label_create(
                actor=actor, board_id=board.pk, name=name, colour=colour, kind=kind
            )
        )
        refused_or_done(lambda: services.board_update(actor=actor, board_id=board.pk, name=name))

    check()


def test_the_move_service_takes_any_ids(board, bob):
    actor = as_actor(bob)
    cards = [make_card(board, title=f"M{n}") for n in range(3)]
    ids = st.one_of(
        st.sampled_from([c.pk for c in cards] + [c.pk for c in board.columns.all()]),
        st.integers(-(2**64), 2**64),
        st.none(),
    )

    @FUZZ
    @given(
        card=st.sampled_from(cards),
        to=ids,
        after=ids,
        before_=ids,
        version=st.one_of(st.none(), st.integers(-5, 2**40)),
    )
    def check(card, to, after, before_, version):
        refused_or_done(
            lambda: services.card_move(
                actor=actor,
                card_id=card.pk,
                to_column_id=to,
                expected_version=version,
                after_id=after,
                before_id=before_,
            )
        )

    check()


def test_a_deployment_record_takes_any_text(board, bob):
    actor = Actor(user=bob, source=Source.API, via="ci")
    card = make_card(board, title="Ship")

    @FUZZ
    @given(
        version=text,
        environment=text,
        status=st.one_of(st.sampled_from(["success", "failed"]), text),
        numbers=st.lists(st.one_of(st.just(card.number), st.integers(-5, 2**40)), max_size=3),
        sha=st.one_of(st.from_regex(r"[0-9a-f]{4,64}", fullmatch=True), text),
        message=text,
    )
    def check(version, environment, status, numbers, sha, message):
        refused_or_done(
            lambda: services.deployment_record(
                actor=actor,
                board_id=board.pk,
                version=version,
                environment=environment,
                status=status,
                card_numbers=numbers,
                commits=[services.Commit(sha=sha, message=message)],
            )
        )

    check()
