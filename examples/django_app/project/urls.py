"""The clinic example's URLs."""

from django.urls import include, path

urlpatterns = [path("", include("clinic.urls"))]
