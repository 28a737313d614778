from django.urls import path

from activity import views
from boards import urls as _board_urls  # noqa: F401  (registers the <key:...> converter)

app_name = "activity"

# The insights pages and the CSV export mount here.
urlpatterns: list = [
    path("b/<key:key>/insights/", views.board_insights, name="insights"),
    path("b/<key:key>/insights/deployments.csv", views.deployments_csv, name="board-csv"),
    path("services/", views.services, name="services"),
    path("services/deployments.csv", views.deployments_csv, name="services-csv"),
]
