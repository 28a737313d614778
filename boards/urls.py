from django.urls import path

from boards import views

app_name = "boards"

urlpatterns = [
    path("", views.board_list, name="list"),
    path("b/<str:key>/", views.board_detail, name="detail"),
    path("b/<str:key>/cards/<int:number>/", views.card_detail, name="card"),
    path("b/<str:key>/cards/<int:number>/move", views.card_move_view, name="card-move"),
    path("b/<str:key>/cards/<int:number>/archive", views.card_archive_view, name="card-archive"),
    path("b/<str:key>/cards/<int:number>/restore", views.card_restore_view, name="card-restore"),
    path("b/<str:key>/cards/<int:number>/comments", views.comment_add_view, name="card-comment"),
    path("b/<str:key>/columns/<int:column_id>/cards", views.column_cards_view, name="column-cards"),
]
