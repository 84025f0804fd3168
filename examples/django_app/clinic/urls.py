"""/patients/ and /patients/<id>/."""

from django.urls import path

from . import views

urlpatterns = [
    path("patients/", views.patients, name="patients"),
    path("patients/<int:patient_id>/", views.patient, name="patient"),
]
