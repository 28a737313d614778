"""The activity log in the admin: searchable and filterable, never editable."""

import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from activity.models import Event
from boards.models import Board
from history.replay import board_verify

VERIFY_PERMISSION = "activity.verify_event"


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = [
        "id", "occurred_at", "board", "seq", "kind", "card_ref", "actor_name", "via",
        "source",
    ]  # fmt: skip
    list_filter = ["board", "kind", "source", ("occurred_at", admin.DateFieldListFilter)]
    search_fields = ["actor_name", "kind"]
    date_hierarchy = "occurred_at"
    list_select_related = ["board", "card__board"]
    readonly_fields = [
        "id",
        "occurred_at",
        "actor",
        "actor_name",
        "via",
        "source",
        "board",
        "card",
        "kind",
        "pretty_payload",
        "txid",
        "request_id",
        "seq",
        "hash",
    ]
    fields = tuple(readonly_fields)
    actions = None
    show_full_result_count = False
    change_list_template = "admin/activity/event/change_list.html"

    def get_urls(self):
        verify = self.admin_site.admin_view(self.verify_view)
        return [path("verify/", verify, name="activity_event_verify"), *super().get_urls()]

    def verify_view(self, request):
        """Verify the log now (every board, or `?board=KEY`): chain, replay, snapshots. A full
        replay of every board per request: only for who holds `activity.verify_event` (and
        superusers); other staff get 403."""
        if not request.user.has_perm(VERIFY_PERMISSION):
            raise PermissionDenied("Verifying the activity log needs its own permission.")
        boards = Board.objects.order_by("key")
        if key := request.GET.get("board", "").strip().upper():
            boards = boards.filter(key=key)
        results = [board_verify(board_id=pk) for pk in boards.values_list("pk", flat=True)]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Verify the activity log",
            "results": results,
            "ok": all(result.ok for result in results),
        }
        return TemplateResponse(request, "admin/activity/event/verify.html", context)

    @admin.display(description="Card")
    def card_ref(self, event: Event) -> str:
        return event.card.ref if event.card is not None else ""

    @admin.display(description="Payload")
    def pretty_payload(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
