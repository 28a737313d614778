from django.contrib import admin
from django.urls import include, path

from flux import views

admin.site.site_header = "Flux administration"
admin.site.site_title = "Flux admin"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("boards.urls")),
]
