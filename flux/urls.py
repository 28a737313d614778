from django.contrib import admin
from django.urls import include, path

from boards import views as boards_views
from flux import views
from flux.api import api

admin.site.site_header = "Flux administration"
admin.site.site_title = "Flux admin"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("settings/tokens/", boards_views.token_settings, name="tokens"),
    path("", include("activity.urls")),
    path("", include("boards.urls")),
]
