from django.urls import path

from history import views

app_name = "history"

# Time travel and the activity feeds.
urlpatterns = [
    path("b/<key:key>/history/", views.board_history, name="history"),
    path("b/<key:key>/activity/", views.board_activity, name="activity"),
    path("people/<str:username>/activity/", views.user_activity, name="user-activity"),
]
