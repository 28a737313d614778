"""Parsing of browser input. Forms check shapes; the rules themselves live in services."""

from django import forms

from activity.log import Actor
from boards.models import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH, Role
from boards.queries import CardFilter, boards_visible


class FilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, strip=True)
    label = forms.CharField(required=False, max_length=50)
    assignee = forms.CharField(required=False, max_length=150)
    release = forms.CharField(required=False, max_length=50)

    def card_filter(self) -> CardFilter:
        """The filter asked for; bad values are dropped rather than failing the page."""
        data = self.cleaned_data if self.is_valid() else {}
        return CardFilter(
            text=data.get("q", ""),
            label=data.get("label", ""),
            assignee=data.get("assignee", ""),
            release=data.get("release", ""),
        )


MAX_ID = 2**63 - 1
MAX_VERSION = 2**31 - 1


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

    def __init__(self, *args, labels=(), members=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["labels"].choices = [(label.pk, label.name) for label in labels]
        self.fields["assignees"].choices = [(user.pk, user.get_username()) for user in members]


class CommentForm(forms.Form):
    body = forms.CharField(max_length=10_000, strip=True, widget=forms.Textarea(attrs={"rows": 3}))


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Shown as the actor in the activity log.")
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

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["boards"].choices = [
            (board.key, f"{board.name} ({board.key})")
            for board in boards_visible(actor=actor).order_by("name")
        ]
