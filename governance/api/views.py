"""Governance REST endpoints. Each view: access layer -> input serializer -> service -> output
serializer. Permissions are the pages' permissions (governance.access); token scopes are
checked by the default permission class."""

import datetime

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from governance import access, selectors, services
from governance.api import serializers as s
from governance.models import ApiToken, Team

ERRORS = {400: OpenApiResponse(description="Invalid input: {error, detail, fields}"),
          401: OpenApiResponse(description="Not authenticated"),
          403: OpenApiResponse(description="Your role or token scope does not allow this"),
          404: OpenApiResponse(description="Not found, or not visible to you"),
          409: OpenApiResponse(description="Conflicts with the current state")}


PAGE_PARAMS = [OpenApiParameter("limit", int, description="Rows per page (default 100)."),
               OpenApiParameter("offset", int, description="Rows to skip.")]


def _errors(*codes):
    return {code: ERRORS[code] for code in codes}


def _page(request, view, queryset, serializer_class, context=None):
    paginator = LimitOffsetPagination()
    rows = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(rows, many=True, context=context or {}).data)


def _team_out(team: Team, user) -> dict:
    data = s.TeamOutput(team).data
    data["role"] = access.team_roles(user).get(team.pk)
    return data


class MeApi(APIView):
    @extend_schema(operation_id="me", responses={200: s.MeOutput, **_errors(401)}, summary="The current user, with platform and team roles")
    def get(self, request):
        user = request.user
        roles = access.team_roles(user)
        teams = [{"slug": t.slug, "name": t.name, "role": roles[t.pk]}
                 for t in Team.objects.filter(pk__in=list(roles)).order_by("name")]
        return Response(s.MeOutput({
            "id": user.pk, "username": user.username, "email": user.email, "full_name": user.get_full_name(),
            "platform_roles": user.platform_roles, "is_platform_admin": user.is_platform_admin,
            "is_approver": user.is_approver, "is_auditor": user.is_auditor, "teams": teams,
        }).data)


class TeamListApi(APIView):
    @extend_schema(operation_id="teams_list", parameters=PAGE_PARAMS, responses={200: s.paginated(s.TeamOutput), **_errors(401, 403)},
                   summary="Teams you may see")
    def get(self, request):
        teams = selectors.team_list_for_user(user=request.user)
        paginator = LimitOffsetPagination()
        rows = paginator.paginate_queryset(teams, request, view=self)
        return paginator.get_paginated_response([_team_out(t, request.user) for t in rows])

    @extend_schema(operation_id="teams_create", request=s.TeamCreateInput, responses={201: s.TeamOutput, **_errors(400, 401, 403, 409)},
                   summary="Create a team (platform admins)")
    def post(self, request):
        access.require(request.user, "team.create")
        data = s.TeamCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        team = services.team_create(actor=request.user, name=values["name"], slug=values["slug"],
                                    description=values["description"], owner_username=values["owner"])
        return Response(_team_out(team, request.user), status=status.HTTP_201_CREATED)


class TeamDetailApi(APIView):
    @extend_schema(operation_id="teams_retrieve", responses={200: s.TeamOutput, **_errors(401, 404)})
    def get(self, request, slug):
        team = access.team_get_for_user(request.user, slug)
        return Response(_team_out(team, request.user))

    @extend_schema(operation_id="teams_update", request=s.TeamUpdateInput, responses={200: s.TeamOutput, **_errors(400, 401, 403, 404)},
                   summary="Rename or describe a team (owners, platform admins)")
    def patch(self, request, slug):
        team = access.team_get_for_user(request.user, slug, "team.change")
        data = s.TeamUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        team = services.team_update(actor=request.user, team=team, **data.validated_data)
        return Response(_team_out(team, request.user))


class MembershipListApi(APIView):
    @extend_schema(operation_id="memberships_list", parameters=PAGE_PARAMS, responses={200: s.paginated(s.MembershipOutput), **_errors(401, 404)})
    def get(self, request, slug):
        team = access.team_get_for_user(request.user, slug)
        return _page(request, self, selectors.membership_list(team=team), s.MembershipOutput)

    @extend_schema(operation_id="memberships_create", request=s.MembershipCreateInput,
                   responses={201: s.MembershipOutput, **_errors(400, 401, 403, 404, 409)},
                   summary="Add a user to the team (team owners and admins, platform admins)")
    def post(self, request, slug):
        team = access.team_get_for_user(request.user, slug, "team.manage_members")
        data = s.MembershipCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_add(actor=request.user, team=team, **data.validated_data)
        return Response(s.MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class MembershipDetailApi(APIView):
    def _membership(self, request, slug, pk, perm):
        team = access.team_get_for_user(request.user, slug, perm)
        membership = selectors.membership_get(team=team, pk=pk)
        if membership is None:
            raise Http404("No such membership.")
        return membership

    @extend_schema(operation_id="memberships_retrieve", responses={200: s.MembershipOutput, **_errors(401, 404)})
    def get(self, request, slug, pk):
        return Response(s.MembershipOutput(self._membership(request, slug, pk, "team.view")).data)

    @extend_schema(operation_id="memberships_update", request=s.MembershipUpdateInput,
                   responses={200: s.MembershipOutput, **_errors(400, 401, 403, 404)},
                   summary="Change a member's role (the last owner cannot be demoted)")
    def patch(self, request, slug, pk):
        membership = self._membership(request, slug, pk, "team.manage_members")
        data = s.MembershipUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_change_role(actor=request.user, membership=membership, role=data.validated_data["role"])
        return Response(s.MembershipOutput(membership).data)

    @extend_schema(operation_id="memberships_destroy", responses={204: None, **_errors(400, 401, 403, 404)},
                   summary="Remove a member (the last owner cannot be removed)")
    def delete(self, request, slug, pk):
        services.membership_remove(actor=request.user, membership=self._membership(request, slug, pk, "team.manage_members"))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenListApi(APIView):
    @extend_schema(operation_id="tokens_list", parameters=PAGE_PARAMS, responses={200: s.paginated(s.TokenOutput), **_errors(401)}, summary="Your API tokens")
    def get(self, request):
        access.require(request.user, "account.use")
        return _page(request, self, selectors.token_list(user=request.user), s.TokenOutput)

    @extend_schema(operation_id="tokens_create", request=s.TokenCreateInput, responses={201: s.TokenCreatedOutput, **_errors(400, 401, 403)},
                   summary="Create a token; the secret is in this response only")
    def post(self, request):
        access.require(request.user, "account.use")
        data = s.TokenCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        expires_at = values.get("expires_at") or timezone.now() + datetime.timedelta(days=values["expires_in_days"])
        token, secret = services.api_token_create(user=request.user, name=values["name"], scopes=values["scopes"],
                                                  expires_at=expires_at,
                                                  via_token=request.auth if isinstance(request.auth, ApiToken) else None)
        body = s.TokenOutput(token).data
        body["token"] = secret
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailApi(APIView):
    def _token(self, request, pk):
        access.require(request.user, "account.use")
        token = selectors.token_get(user=request.user, pk=pk)
        if token is None:
            raise Http404("No such token.")
        return token

    @extend_schema(operation_id="tokens_retrieve", responses={200: s.TokenOutput, **_errors(401, 404)})
    def get(self, request, pk):
        return Response(s.TokenOutput(self._token(request, pk)).data)

    @extend_schema(operation_id="tokens_revoke", responses={204: None, **_errors(401, 404, 409)},
                   summary="Revoke a token; it is refused from the next request on")
    def delete(self, request, pk):
        services.api_token_revoke(actor=request.user, token=self._token(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
