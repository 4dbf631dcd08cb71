from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import health
from .auth import SignInForm

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(authentication_form=SignInForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("arena/", include("arena.urls")),
    path("", include("metrics.urls")),
    path("api/", include("evalsite.api_urls")),
    path("", include("annotation.urls")),
]
