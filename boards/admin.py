"""Setup in the Django admin. Every save goes through `boards.services`, so it is logged too.

The admin's forms validate the input; the services then apply the change as the staff user
(source "admin") and write its event. Deleting is off: boards and cards are kept, columns
hold cards, and membership removal is a service call.
"""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model
from django.http import HttpRequest

from activity.log import Actor
from activity.models import Source
from boards import services
from boards.errors import FluxError, refusal_message
from boards.models import ApiToken, Board, Card, Column, Comment, Label, Membership
from boards.queries import ref_parse
from boards.tokens import token_create, token_revoke


def admin_actor(request: HttpRequest) -> Actor:
    return Actor(user=request.user, source=Source.ADMIN)


def formset_saved(formset, *, new=(), changed=(), deleted=()) -> None:
    """Tell the admin's change history what the services did for an inline.

    Django reads these lists, which only `formset.save()` sets, to write its LogEntry; the
    services save instead, so without them every save with an inline would be a 500.
    """
    formset.new_objects = list(new)
    formset.changed_objects = list(changed)
    formset.deleted_objects = list(deleted)


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]  # what the mixin is mixed into
else:
    _ModelAdmin = object


class ServiceAdminMixin(_ModelAdmin):
    """Shows a service's refusal as an admin error message instead of a 500."""

    def changeform_view(self, request, *args, **kwargs):
        try:
            with transaction.atomic():
                return super().changeform_view(request, *args, **kwargs)
        except (ValidationError, FluxError) as error:
            text = refusal_message(error)
            self.message_user(request, f"Not saved: {text}", level=messages.ERROR)
            from django.http import HttpResponseRedirect

            return HttpResponseRedirect(request.get_full_path())


class ColumnInline(admin.TabularInline):
    model = Column
    fields = ["name", "position", "stage", "wip_limit", "wip_blocks"]
    extra = 0
    can_delete = False
    ordering = ["position", "id"]


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ["user", "role"]
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Board)
class BoardAdmin(ServiceAdminMixin, admin.ModelAdmin):
    list_display = ["name", "key", "created_at"]
    search_fields = ["name", "key"]
    inlines = [ColumnInline, MembershipInline]
    actions: list = []  # the apps above add theirs (delivery: export deployment history)

    def get_readonly_fields(self, request, obj=None):
        return ["key", "created_at"] if obj else ["created_at"]

    def get_fields(self, request, obj=None):
        return ["name", "key", "description", "created_at"]

    def get_inlines(self, request, obj):
        # A new board gets its five default columns from board_create; members come after.
        return self.inlines if obj else []

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        actor = admin_actor(request)
        if change:
            services.board_update(
                actor=actor,
                board_id=obj.pk,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
            )
        else:
            created = services.board_create(
                actor=actor,
                name=form.cleaned_data["name"],
                key=form.cleaned_data["key"],
                description=form.cleaned_data["description"],
            )
            obj.pk = created.pk
            obj.created_at = created.created_at

    def save_formset(self, request, form, formset, change):
        actor = admin_actor(request)
        board = form.instance
        new: list[Model] = []
        changed: list[tuple[Model, list[str]]] = []  # (saved, its changed fields)
        deleted: list[Model] = []
        if formset.model is Column:
            for inline_form in formset.forms:
                if not inline_form.has_changed():
                    continue
                data = inline_form.cleaned_data
                fields = {
                    k: data[k] for k in ["name", "stage", "position", "wip_limit", "wip_blocks"]
                }
                if inline_form.instance.pk:
                    saved = services.column_update(
                        actor=actor, column_id=inline_form.instance.pk, **fields
                    )
                    changed.append((saved, inline_form.changed_data))
                else:
                    new.append(services.column_create(actor=actor, board_id=board.pk, **fields))
            formset_saved(formset, new=new, changed=changed)
        elif formset.model is Membership:
            for inline_form in formset.forms:
                data = getattr(inline_form, "cleaned_data", None) or {}
                if not data:
                    continue
                if data.get("DELETE") and inline_form.instance.pk:
                    services.membership_remove(
                        actor=actor, board_id=board.pk, user_id=inline_form.instance.user_id
                    )
                    deleted.append(inline_form.instance)
                elif inline_form.has_changed() and not data.get("DELETE"):
                    if inline_form.instance.pk and "user" in inline_form.changed_data:
                        services.membership_remove(
                            actor=actor,
                            board_id=board.pk,
                            user_id=Membership.objects.get(pk=inline_form.instance.pk).user_id,
                        )
                    membership = services.membership_set(
                        actor=actor, board_id=board.pk, user_id=data["user"].pk, role=data["role"]
                    )
                    if inline_form.instance.pk:
                        changed.append((membership, inline_form.changed_data))
                    else:
                        new.append(membership)
            formset_saved(formset, new=new, changed=changed, deleted=deleted)
        else:  # pragma: no cover - no other inlines exist
            super().save_formset(request, form, formset, change)


@admin.register(Label)
class LabelAdmin(ServiceAdminMixin, admin.ModelAdmin):
    list_display = ["name", "board", "kind", "colour"]
    list_filter = ["kind", "board"]
    search_fields = ["name"]
    actions = None

    def get_readonly_fields(self, request, obj=None):
        return ["board"] if obj else []

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        actor = admin_actor(request)
        data = form.cleaned_data
        if change:
            services.label_update(
                actor=actor,
                label_id=obj.pk,
                name=data["name"],
                colour=data["colour"],
                kind=data["kind"],
            )
        else:
            created = services.label_create(
                actor=actor,
                board_id=data["board"].pk,
                name=data["name"],
                colour=data["colour"],
                kind=data["kind"],
            )
            obj.pk = created.pk


class CommentInline(admin.TabularInline):
    model = Comment
    fields = readonly_fields = ("author_name", "body", "created_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class CardAdminForm(forms.ModelForm):
    """Carries the version the admin saw, so saving a stale page cannot undo a newer change."""

    seen_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["seen_version"].initial = self.instance.version
            self.fields["seen_version"].required = True


@admin.register(Card)
class CardAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = CardAdminForm
    list_display = ["ref_display", "title", "column", "archived", "updated_at"]
    list_filter = ["archived", "board", "column__stage"]
    search_fields = ["title", "board__key"]
    list_select_related = ["board", "column__board"]
    autocomplete_fields = ["assignees"]
    filter_horizontal = ["labels"]
    inlines = [CommentInline]
    actions = None

    @admin.display(description="Ref", ordering="number")
    def ref_display(self, card: Card) -> str:
        return card.ref

    def get_search_results(self, request, queryset, search_term):
        """Also find a card by its ref, e.g. PAY-42."""
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if ref := ref_parse(search_term):
            key, number = ref
            # From the queryset given, which the changelist's filters have already narrowed.
            found |= queryset.filter(board__key=key, number=number)
        return found, may_have_duplicates

    def get_fields(self, request, obj=None):
        fields = ["board", "column", "title", "description", "due_date", "labels", "assignees"]
        return [*fields, "archived", "version", "seen_version", "created_at"] if obj else fields

    def get_readonly_fields(self, request, obj=None):
        return ["board", "version", "created_at"] if obj else []

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "column":
            kwargs["queryset"] = Column.objects.select_related("board")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        """Apply the fields through the services; labels and assignees follow in save_related."""
        actor = admin_actor(request)
        data = form.cleaned_data
        if not change:
            if data["column"].board_id != data["board"].pk:
                raise ValidationError({"column": "That column belongs to another board."})
            created = services.card_create(
                actor=actor,
                board_id=data["board"].pk,
                column_id=data["column"].pk,
                title=data["title"],
                description=data["description"],
                due_date=data["due_date"],
            )
            # The admin's "added" message and history name the card by its ref and title.
            obj.pk, obj.number, obj.title = created.pk, created.number, created.title
            return
        card = services.card_update(
            actor=actor,
            card_id=obj.pk,
            expected_version=data["seen_version"],
            title=data["title"],
            description=data["description"],
            due_date=data["due_date"],
        )
        if not data["archived"] and card.archived:  # restore first: only open cards move
            card = services.card_restore(actor=actor, card_id=card.pk)
        if data["column"].pk != card.column_id:
            card = services.card_move(
                actor=actor,
                card_id=card.pk,
                to_column_id=data["column"].pk,
                expected_version=card.version,
            ).card
        if data["archived"] and not card.archived:
            services.card_archive(actor=actor, card_id=card.pk)

    def save_related(self, request, form, formsets, change):
        for formset in formsets:  # the comments inline is read-only
            formset_saved(formset)
        actor = admin_actor(request)
        card = Card.objects.get(pk=form.instance.pk)
        services.card_labels_set(
            actor=actor,
            card_id=card.pk,
            label_ids=[label.pk for label in form.cleaned_data["labels"]],
        )
        services.card_assign(
            actor=actor, card_id=card.pk, user_ids=[u.pk for u in form.cleaned_data["assignees"]]
        )


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name", "role", "boards"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here (the secret is shown once, in the message) and revoked, never edited."""

    form = ApiTokenForm
    list_display = ["name", "user", "prefix", "role", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "user__username", "prefix"]
    autocomplete_fields = ["user"]
    filter_horizontal = ["boards"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [
            "user",
            "name",
            "role",
            "boards",
            "prefix",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        token, secret = token_create(
            actor=admin_actor(request),
            user=data["user"],
            name=data["name"],
            role=data["role"],
            board_keys=[board.key for board in data["boards"]],
        )
        obj.pk = token.pk
        obj.prefix = token.prefix
        self.message_user(
            request,
            f"Token {token.name!r} made. Copy it now, it is not shown again: {secret}",
            level=messages.WARNING,
        )

    def save_related(self, request, form, formsets, change):
        """token_create already set the boards."""

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            token_revoke(actor=admin_actor(request), token_id=token.pk)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
