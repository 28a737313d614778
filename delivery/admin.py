"""Delivery in the admin: the boards list gains "Export deployment history (CSV)"."""

from django.contrib import admin

from boards.admin import BoardAdmin
from delivery.export import ExportFilter, deployments_csv_response


@admin.action(description="Export deployment history (CSV)")
def export_deployments(modeladmin, request, queryset):
    scope = ExportFilter(board_ids=frozenset(queryset.values_list("pk", flat=True)))
    return deployments_csv_response(request=request, scope=scope, filename="flux-deployments.csv")


# boards is below delivery and knows nothing of it: the board admin is extended from here.
BoardAdmin.actions = [*BoardAdmin.actions, export_deployments]
