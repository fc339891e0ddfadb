from django.urls import path

from governance.api import views

urlpatterns = [
    path("me/", views.MeApi.as_view(), name="api-me"),
    path("teams/", views.TeamListApi.as_view(), name="api-team-list"),
    path("teams/<slug:slug>/", views.TeamDetailApi.as_view(), name="api-team-detail"),
    path("teams/<slug:slug>/memberships/", views.MembershipListApi.as_view(), name="api-membership-list"),
    path("teams/<slug:slug>/memberships/<int:pk>/", views.MembershipDetailApi.as_view(), name="api-membership-detail"),
    path("tokens/", views.TokenListApi.as_view(), name="api-token-list"),
    path("tokens/<int:pk>/", views.TokenDetailApi.as_view(), name="api-token-detail"),
]
