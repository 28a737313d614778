from django.urls import path

from activity import views
from boards import urls as _board_urls  # noqa: F401  (registers the <key:...> converter)

app_name = "activity"

# The insights pages, the CSV export and the history pages mount here.
urlpatterns: list = [
    path("b/<key:key>/insights/", views.board_insights, name="insights"),
    path("b/<key:key>/insights/deployments.csv", views.deployments_csv, name="board-csv"),
    path("b/<key:key>/history/", views.board_history, name="history"),
    path("b/<key:key>/activity/", views.board_activity, name="activity"),
    path("people/<str:username>/activity/", views.user_activity, name="user-activity"),
    path("services/", views.services, name="services"),
    path("services/deployments.csv", views.deployments_csv, name="services-csv"),
]
