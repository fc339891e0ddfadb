"""Authorization table for workspace pages and the workspace API.

The workspace is member's (private, pending, team vision). Seeing it: its owner, the team's
members of any role, platform staff; outsiders get 404. Operating it (stop/cancel/restart/extend):
the owner, team admins/owners, platform admins. Launching: members of the team (not viewers)."""

from tests.authz import Case, api, page
from workspaces.models import Image, Workspace


def _image(world):
    return Image.objects.get_or_create(name="lab", defaults={"reference": "portal-lab:ci"})[0]


def _fleet(world):
    from scheduler.inventory import inventory_sync_all

    return inventory_sync_all()


def _workspace(world):
    return Workspace.objects.create(team=world.team, owner=world.user("member"), name="authz", image=world.get("image"))


OBJECTS = {"image": _image, "fleet": _fleet, "workspace": _workspace}


def _ws(world):
    return {"pk": world.get("workspace").pk}


def _action(action):
    return lambda world: {"pk": world.get("workspace").pk, "action": action}


def _create_form(world):
    world.get("fleet")
    world.get("image")
    return {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 1, "duration_hours": 1,
            "sharing": "private", "name": "authz-new"}


def _create_api(world):
    world.get("fleet")
    world.get("image")
    return {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 1, "duration_hours": 1}


SEE = dict(outsider=404, viewer=200, member=200, admin=200, owner=200, approver=200, auditor=200, platform_admin=200)
ALL_200 = dict(SEE, outsider=200)
OPERATE_DENIED = dict(outsider=404, viewer=403, approver=403, auditor=403)
LAUNCHERS = ("member", "admin", "owner")
NOT_LAUNCHERS = dict(viewer=403, approver=403, auditor=403, platform_admin=403)


def _operate(ok):
    return dict(OPERATE_DENIED, member=ok, admin=ok, owner=ok, platform_admin=ok)


CASES = {
    "workspace-list": [Case(page(**ALL_200))],
    "workspace-new": [
        # Outsiders own another team: they may launch there (the form shows only their teams).
        Case(page(**NOT_LAUNCHERS, outsider=200, member=200, admin=200, owner=200)),
        # Outsiders cannot pick team vision: the form refuses the choice (400, nothing created).
        Case(page(**NOT_LAUNCHERS, outsider=400, member=302, admin=302, owner=302), method="post", data=_create_form),
    ],
    "workspace-detail": [Case(page(**SEE), kwargs=_ws)],
    "workspace-action": [
        Case(page(**_operate(302)), method="post", kwargs=_action("cancel")),
        Case(page(**_operate(302)), method="post", kwargs=_action("extend"), data={"hours": 1}),
        # A pending workspace cannot be stopped or restarted: 409 for those who may operate it.
        Case(page(**_operate(409)), method="post", kwargs=_action("stop")),
        Case(page(**_operate(409)), method="post", kwargs=_action("restart")),
    ],
    "api-workspace-list": [
        Case(api(**ALL_200)),
        Case(api(**NOT_LAUNCHERS, outsider=404, member=201, admin=201, owner=201), method="post", json=True, data=_create_api),
    ],
    "api-workspace-detail": [Case(api(**SEE), kwargs=_ws)],
    "api-workspace-cancel": [Case(api(**_operate(200)), method="post", kwargs=_ws, json=True)],
    "api-workspace-extend": [Case(api(**_operate(200)), method="post", kwargs=_ws, json=True, data={"hours": 1})],
    "api-workspace-stop": [Case(api(**_operate(409)), method="post", kwargs=_ws, json=True)],
    "api-workspace-restart": [Case(api(**_operate(409)), method="post", kwargs=_ws, json=True)],
}
