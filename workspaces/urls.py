from django.urls import path, re_path

from workspaces import views

urlpatterns = [
    path("workspaces/", views.workspace_list, name="workspace-list"),
    path("workspaces/new", views.workspace_new, name="workspace-new"),
    path("workspaces/<int:pk>/", views.workspace_detail, name="workspace-detail"),
    re_path(r"^workspaces/(?P<pk>\d+)/(?P<action>stop|cancel|restart|extend)$", views.workspace_action, name="workspace-action"),
]
