"""Authorization table for governance and portal pages and the governance API."""

from tests.authz import Case, api, page
from tests.factories import MembershipFactory, QuotaGrantFactory, UserFactory, make_token

VISION = {"slug": "vision"}
STAFF_SEE = {"approver": 200, "auditor": 200, "platform_admin": 200}
EVERYONE_200 = dict(outsider=200, viewer=200, member=200, admin=200, owner=200, **STAFF_SEE)


def _extra_membership(world):
    return MembershipFactory(team=world.team, user=UserFactory(username="erin-extra"), role="member")


OBJECTS = {
    "newcomer": lambda w: UserFactory(username="nina-newcomer"),
    "extra_membership": _extra_membership,
    "grant": lambda w: QuotaGrantFactory(team=w.team, flavor="H100", count=4),
    "member_token": lambda w: make_token(w.user("member"), name="member's")[0],
}


def _membership_kwargs(world):
    return {"slug": "vision", "pk": world.get("extra_membership").pk}


def _member_token(world):
    return {"pk": world.get("member_token").pk}


def _grant(world):
    return {"pk": world.get("grant").pk}


# Team pages: outsiders do not see the team (404); platform staff see every team.
TEAM_READ = page(outsider=404, viewer=200, member=200, admin=200, owner=200, **STAFF_SEE)
TEAM_CHANGE = dict(outsider=404, viewer=403, member=403, admin=403, approver=403, auditor=403)
MANAGE_MEMBERS = dict(outsider=404, viewer=403, member=403, approver=403, auditor=403)
ONLY_PLATFORM_ADMIN = dict(outsider=403, viewer=403, member=403, admin=403, owner=403, approver=403, auditor=403)
AUDIT_READERS = dict(outsider=403, viewer=403, member=403, admin=403, owner=403, approver=403, auditor=200, platform_admin=200)

CASES = {
    # portal
    "home": [Case(page(**EVERYONE_200))],
    "api-schema": [Case(api(anonymous=200, **EVERYONE_200))],
    "api-docs": [Case(api(anonymous=200, **EVERYONE_200))],
    # sign-in
    "password_change": [Case(page(**EVERYONE_200))],
    "password_change_done": [Case(page(**EVERYONE_200))],
    # teams
    "team-list": [
        Case(page(**EVERYONE_200)),
        Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=302), method="post",
             data={"name": "Robotics", "slug": "robotics", "description": ""}),
    ],
    "team-detail": [Case(TEAM_READ, kwargs=VISION)],
    "team-edit": [
        Case(page(**TEAM_CHANGE, owner=200, platform_admin=200), kwargs=VISION),
        Case(page(**TEAM_CHANGE, owner=302, platform_admin=302), method="post", kwargs=VISION, data={"name": "Vision II", "description": "CV"}),
    ],
    "team-member-add": [
        Case(page(**MANAGE_MEMBERS, admin=302, owner=302, platform_admin=302), method="post",
             kwargs=VISION, data=lambda w: {"username": w.get("newcomer").username, "role": "member"}),
    ],
    "team-member-role": [
        Case(page(**MANAGE_MEMBERS, admin=302, owner=302, platform_admin=302), method="post",
             kwargs=_membership_kwargs, data={"role": "viewer"}),
    ],
    "team-member-remove": [
        Case(page(**MANAGE_MEMBERS, admin=302, owner=302, platform_admin=302), method="post", kwargs=_membership_kwargs),
    ],
    # profile and tokens: everyone signed in has their own; someone else's token does not exist for them
    "profile": [Case(page(**EVERYONE_200))],
    "token-create": [Case(page(**EVERYONE_200), method="post", data={"name": "laptop", "scopes": ["read"], "expires_in_days": "30"})],
    "token-revoke": [Case(page(member=302), default=404, method="post", kwargs=_member_token)],
    # quota grants: team owners and platform staff read; platform admins change
    "quota": [Case(page(outsider=200, viewer=403, member=403, admin=403, owner=200, **STAFF_SEE))],
    "quota-grant-create": [
        Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=200)),
        Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=302), method="post",
             data={"team": "vision", "flavor": "A100", "count": "2"}),
    ],
    "quota-grant-edit": [
        Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=200), kwargs=_grant),
        Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=302), method="post", kwargs=_grant, data={"flavor": "H100", "count": "6"}),
    ],
    "quota-grant-end": [Case(page(**ONLY_PLATFORM_ADMIN, platform_admin=302), method="post", kwargs=_grant)],
    # audit trail
    "audit": [Case(page(**AUDIT_READERS))],
    "audit-verify": [Case(page(**AUDIT_READERS))],
    # API
    "api-me": [Case(api(**EVERYONE_200))],
    "api-team-list": [
        Case(api(**EVERYONE_200)),
        Case(api(**ONLY_PLATFORM_ADMIN, platform_admin=201), method="post", json=True,
             data={"name": "Robotics", "slug": "robotics"}),
    ],
    "api-team-detail": [
        Case(api(**TEAM_READ | {"anonymous": 401}), kwargs=VISION),
        Case(api(**TEAM_CHANGE, owner=200, platform_admin=200), method="patch", json=True, kwargs=VISION,
             data={"description": "Computer vision"}),
    ],
    "api-membership-list": [
        Case(api(**TEAM_READ | {"anonymous": 401}), kwargs=VISION),
        Case(api(**MANAGE_MEMBERS, admin=201, owner=201, platform_admin=201), method="post", json=True, kwargs=VISION,
             data=lambda w: {"username": w.get("newcomer").username, "role": "viewer"}),
    ],
    "api-membership-detail": [
        Case(api(**TEAM_READ | {"anonymous": 401}), kwargs=_membership_kwargs),
        Case(api(**MANAGE_MEMBERS, admin=200, owner=200, platform_admin=200), method="patch", json=True,
             kwargs=_membership_kwargs, data={"role": "viewer"}),
        Case(api(**MANAGE_MEMBERS, admin=204, owner=204, platform_admin=204), method="delete", kwargs=_membership_kwargs),
    ],
    "api-token-list": [
        Case(api(**EVERYONE_200)),
        Case(api(**{r: 201 for r in EVERYONE_200}), method="post", json=True,
             data={"name": "ci", "scopes": ["read"], "expires_in_days": 30}),
    ],
    "api-token-detail": [
        Case(api(member=200), default=404, kwargs=_member_token),
        Case(api(member=204), default=404, method="delete", kwargs=_member_token),
    ],
}

