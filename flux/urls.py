from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from boards import views as boards_views
from flux import views
from flux.api import api
from flux.converters import converters_register
from flux.login import LoginView, ThrottledAdminAuthenticationForm

converters_register()

admin.site.site_header = "Flux administration"
admin.site.site_title = "Flux admin"
admin.site.login_form = ThrottledAdminAuthenticationForm

# Log in, log out and change one's password. No self-service password reset: Flux sends no
# mail; an administrator sets a new password in the admin.
accounts = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("accounts/", include(accounts)),
    path("settings/tokens/", boards_views.token_settings, name="tokens"),
    path("", include("delivery.urls")),
    path("", include("history.urls")),
    path("", include("boards.urls")),
]
