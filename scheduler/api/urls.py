from django.urls import path

from scheduler.api import views

urlpatterns: list = [
    path("nodes/", views.NodeListApi.as_view(), name="api-node-list"),
    path("nodes/<str:name>/", views.NodeDetailApi.as_view(), name="api-node-detail"),
    path("nodes/<str:name>/drain/", views.NodeDrainApi.as_view(), name="api-node-drain"),
    path("nodes/<str:name>/undrain/", views.NodeUndrainApi.as_view(), name="api-node-undrain"),
    path("nodes/<str:name>/confirm-gone/", views.NodeConfirmGoneApi.as_view(), name="api-node-confirm-gone"),
    path("gpus/", views.GpuListApi.as_view(), name="api-gpu-list"),
    path("allocation-requests/", views.AllocationRequestListApi.as_view(), name="api-allocation-request-list"),
    path("allocation-requests/<int:pk>/", views.AllocationRequestDetailApi.as_view(), name="api-allocation-request-detail"),
    path("reservations/", views.ReservationListApi.as_view(), name="api-reservation-list"),
    path("reservations/<int:pk>/", views.ReservationDetailApi.as_view(), name="api-reservation-detail"),
]
