from django.contrib.auth import views as auth_views
from django.urls import path

from governance import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("teams/", views.team_list, name="team-list"),
    path("teams/<slug:slug>/", views.team_detail, name="team-detail"),
    path("teams/<slug:slug>/edit/", views.team_edit, name="team-edit"),
    path("teams/<slug:slug>/members/", views.team_member_add, name="team-member-add"),
    path("teams/<slug:slug>/members/<int:pk>/role/", views.team_member_role, name="team-member-role"),
    path("teams/<slug:slug>/members/<int:pk>/remove/", views.team_member_remove, name="team-member-remove"),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/", views.token_create, name="token-create"),
    path("profile/tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
    path("quota/", views.quota, name="quota"),
    path("quota/grants/new/", views.quota_grant_create, name="quota-grant-create"),
    path("quota/grants/<int:pk>/", views.quota_grant_edit, name="quota-grant-edit"),
    path("quota/grants/<int:pk>/end/", views.quota_grant_end, name="quota-grant-end"),
    path("audit/", views.audit_list, name="audit"),
    path("audit/verify/", views.audit_verify, name="audit-verify"),
]
