from django.urls import path

from workspaces.api import views

urlpatterns = [
    path("workspaces/", views.WorkspaceListApi.as_view(), name="api-workspace-list"),
    path("workspaces/<int:pk>/", views.WorkspaceDetailApi.as_view(), name="api-workspace-detail"),
    path("workspaces/<int:pk>/stop/", views.stop_view, name="api-workspace-stop"),
    path("workspaces/<int:pk>/cancel/", views.cancel_view, name="api-workspace-cancel"),
    path("workspaces/<int:pk>/restart/", views.restart_view, name="api-workspace-restart"),
    path("workspaces/<int:pk>/extend/", views.extend_view, name="api-workspace-extend"),
]
