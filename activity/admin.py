"""The activity log in the admin: searchable and filterable, never editable."""

import json

from django.contrib import admin
from django.utils.html import format_html

from activity.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "occurred_at", "board", "kind", "card_ref", "actor_name", "source"]
    list_filter = ["board", "kind", "source", ("occurred_at", admin.DateFieldListFilter)]
    search_fields = ["actor_name", "kind"]
    date_hierarchy = "occurred_at"
    list_select_related = ["board", "card__board"]
    readonly_fields = [
        "id",
        "occurred_at",
        "actor",
        "actor_name",
        "source",
        "board",
        "card",
        "kind",
        "pretty_payload",
        "txid",
    ]
    fields = readonly_fields
    actions = None
    show_full_result_count = False

    @admin.display(description="Card")
    def card_ref(self, event: Event) -> str:
        return event.card.ref if event.card_id else ""

    @admin.display(description="Payload")
    def pretty_payload(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
