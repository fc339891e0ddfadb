"""What each role sees first on the home page. Reads only, through the apps' selectors."""

from governance import access, selectors as gov_selectors


def for_user(user) -> dict:
    return {
        "teams": gov_selectors.team_list_for_user(user=user),
        "platform_roles": user.platform_roles,
        "can_fleet": access.can(user, "fleet.view"),
        "can_audit": access.can(user, "audit.view"),
        "can_decide_quota": access.can(user, "quota.decide"),
    }
