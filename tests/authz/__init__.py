"""The authorization matrix's tables. Each app has one module here (governance.py, scheduler.py,
workspaces.py, ...) defining CASES: {url_name: [Case, ...]}. tests/test_authz_matrix.py walks
every named URL pattern in the resolver and fails when one has no Case and is not EXEMPT, so a new
endpoint cannot be forgotten.

A Case says, for one method, what status each role gets. Roles (tests.conftest.ROLES):
anonymous, outsider (owner of another team), viewer, member, admin, owner (of the team `vision`),
approver, auditor, platform_admin (no team membership).
Conventions: anonymous gets 302 (to login) on pages and 401 on the API; someone who may not see
a team's object gets 404; someone who sees it without the needed role gets 403.
"""

from dataclasses import dataclass, field
from typing import Callable

ALL_ROLES = ("anonymous", "outsider", "viewer", "member", "admin", "owner", "approver", "auditor", "platform_admin")


@dataclass
class Case:
    # expected status per role; roles left out take `default`
    expect: dict[str, int]
    method: str = "get"
    default: int | None = None
    # kwargs for reverse(); a callable gets the World (tests/test_authz_matrix.py) and returns them
    kwargs: dict | Callable = field(default_factory=dict)
    # request body for unsafe methods (a callable gets the World)
    data: dict | Callable | None = None
    json: bool = False
    # extra query string
    query: str = ""

    def expected(self, role: str) -> int:
        if role in self.expect:
            return self.expect[role]
        if self.default is None:
            raise KeyError(f"no expectation for role {role}")
        return self.default


def page(anonymous=302, **expect) -> dict:
    """Expectations for a page: anonymous is redirected to login unless said otherwise."""
    return {"anonymous": anonymous, **expect}


def api(anonymous=401, **expect) -> dict:
    return {"anonymous": anonymous, **expect}
