from django.urls import path

from delivery import views

app_name = "delivery"

# The insights pages and the CSV export of deployment history.
urlpatterns = [
    path("b/<key:key>/insights/", views.board_insights, name="insights"),
    path("b/<key:key>/insights/deployments.csv", views.deployments_csv, name="board-csv"),
    path("services/", views.services_overview, name="services"),
    path("services/deployments.csv", views.deployments_csv, name="services-csv"),
]
