"""Parsing of browser input. Forms check shapes; the rules themselves live in services,
and the limits on the models."""

import re
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from activity.log import Actor
from boards.models import (
    COMMENT_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    LABEL_NAME_MAX_LENGTH,
    MAX_ID,
    MAX_VERSION,
    SEARCH_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    TOKEN_NAME_MAX_LENGTH,
    USERNAME_MAX_LENGTH,
    Label,
    Role,
)
from boards.queries import CardFilter, boards_visible

# At most 18 digits: whatever they say fits a bigint, so a lookup by it cannot overflow.
NUMBER_RE = re.compile(r"[0-9]{1,18}")


def number_parse(text: str | None) -> int | None:
    """A whole number (an id, seconds) from a query or form value; None for anything else."""
    text = (text or "").strip()
    return int(text) if NUMBER_RE.fullmatch(text) else None


def number_list_parse(text: str | None, *, most: int = 100) -> list[int] | None:
    """Numbers from "1,2,3" (empty: []); None if any part is not one, or there are too many."""
    parts = [part for part in (text or "").split(",") if part]
    numbers = [number for number in map(number_parse, parts) if number is not None]
    return numbers if len(numbers) == len(parts) <= most else None


def choices_set(form: forms.Form, name: str, choices: list[tuple[Any, str]]) -> None:
    """Give a form's choice field its choices, known only when the form is made."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)  # every caller names one
    field.choices = choices


class FilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=SEARCH_MAX_LENGTH, strip=True)
    label = forms.CharField(required=False, max_length=LABEL_NAME_MAX_LENGTH)
    assignee = forms.CharField(required=False, max_length=USERNAME_MAX_LENGTH)
    release = forms.CharField(required=False, max_length=LABEL_NAME_MAX_LENGTH)

    def card_filter(self) -> CardFilter:
        """The filter asked for; bad values are dropped rather than failing the page."""
        data = self.cleaned_data if self.is_valid() else {}
        return CardFilter(
            text=data.get("q", ""),
            label=data.get("label", ""),
            assignee=data.get("assignee", ""),
            release=data.get("release", ""),
        )


class MoveForm(forms.Form):
    to_column = forms.IntegerField(min_value=1, max_value=MAX_ID)
    after = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    version = forms.IntegerField(min_value=1, max_value=MAX_VERSION)


class CardCreateForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX_LENGTH, strip=True)


class CardEditForm(forms.Form):
    version = forms.IntegerField(min_value=1, max_value=MAX_VERSION, widget=forms.HiddenInput)
    title = forms.CharField(max_length=TITLE_MAX_LENGTH, strip=True)
    description = forms.CharField(
        required=False,
        max_length=DESCRIPTION_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="Markdown.",
    )
    due_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    labels = forms.TypedMultipleChoiceField(
        required=False, coerce=int, widget=forms.CheckboxSelectMultiple
    )
    assignees = forms.TypedMultipleChoiceField(
        required=False, coerce=int, widget=forms.CheckboxSelectMultiple
    )

    def __init__(
        self,
        *args: Any,
        labels: Iterable[Label] = (),
        members: Iterable[AbstractBaseUser] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        choices_set(self, "labels", [(label.pk, label.name) for label in labels])
        choices_set(self, "assignees", [(user.pk, user.get_username()) for user in members])


class CommentForm(forms.Form):
    body = forms.CharField(
        max_length=COMMENT_MAX_LENGTH, strip=True, widget=forms.Textarea(attrs={"rows": 3})
    )


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=TOKEN_NAME_MAX_LENGTH, help_text="Shown as the actor in the activity log."
    )
    role = forms.ChoiceField(
        choices=[
            (Role.EDITOR.value, "Editor: move and edit cards"),
            (Role.VIEWER.value, "Viewer: read only"),
        ]
    )
    boards = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: all your boards.",
    )

    def __init__(self, *args: Any, actor: Actor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices_set(
            self,
            "boards",
            [
                (board.key, f"{board.name} ({board.key})")
                for board in boards_visible(actor=actor).order_by("name")
            ],
        )
