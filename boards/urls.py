from django.urls import path

from boards import views

app_name = "boards"

urlpatterns = [
    path("", views.board_list, name="list"),
    path("b/<key:key>/", views.board_detail, name="detail"),
    path("b/<key:key>/live/", views.board_live, name="live"),
    path("b/<key:key>/live/changes", views.board_changes, name="live-changes"),
    path("b/<key:key>/columns/", views.board_columns_view, name="columns"),
    path("b/<key:key>/cards/<n:number>/", views.card_detail, name="card"),
    path("b/<key:key>/cards/<n:number>/move", views.card_move_view, name="card-move"),
    path("b/<key:key>/cards/<n:number>/archive", views.card_archive_view, name="card-archive"),
    path("b/<key:key>/cards/<n:number>/restore", views.card_restore_view, name="card-restore"),
    path("b/<key:key>/cards/<n:number>/comments", views.comment_add_view, name="card-comment"),
    path("b/<key:key>/columns/<n:column_id>/cards", views.column_cards_view, name="column-cards"),
]
