"""Every URL the project has, for every role, answers with the expected status.

The URL names come from the resolver, so a new page or endpoint without a row in tests/authz/
fails here. Tables: tests/authz/<app>.py."""

import importlib
import json
import pkgutil

import pytest
from django.urls import get_resolver, reverse

import tests.authz as authz_pkg
from tests.authz import ALL_ROLES, Case

# Not ours to guard, or public by design; each with its reason.
EXEMPT = {
    "login": "public: the sign-in page",
    "logout": "public: signing out is always allowed (POST only)",
    "healthz": "public: liveness probe for the load balancer",
    "readyz": "public: readiness probe for the load balancer",
}
EXEMPT_NAMESPACES = {"admin": "Django admin: guarded by is_staff, outside the product's access layer"}


def _tables():
    cases, objects = {}, {}
    for info in pkgutil.iter_modules(authz_pkg.__path__):
        module = importlib.import_module(f"tests.authz.{info.name}")
        for name, entries in getattr(module, "CASES", {}).items():
            assert name not in cases, f"URL {name} has cases in two tables"
            cases[name] = entries if isinstance(entries, list) else [entries]
        objects.update(getattr(module, "OBJECTS", {}))
    return cases, objects


CASES, OBJECTS = _tables()


def _url_names(resolver=None, namespace=""):
    resolver = resolver or get_resolver()
    names = []
    for pattern in resolver.url_patterns:
        if hasattr(pattern, "url_patterns"):
            ns = pattern.namespace
            if ns in EXEMPT_NAMESPACES:
                continue
            names += _url_names(pattern, f"{namespace}{ns}:" if ns else namespace)
        elif pattern.name:
            names.append(f"{namespace}{pattern.name}")
    return sorted(set(names))


URL_NAMES = _url_names()


def test_every_url_has_an_authorization_case():
    missing = [n for n in URL_NAMES if n not in CASES and n not in EXEMPT]
    assert not missing, f"URL patterns without a row in tests/authz/: {missing}"
    stale = [n for n in CASES if n not in URL_NAMES]
    assert not stale, f"rows for URL names that no longer exist: {stale}"


class World:
    """The people and objects a case may refer to, built once per test."""

    def __init__(self, request):
        self._request = request
        self._objects = {}
        self.team = request.getfixturevalue("team")
        self.other_team = request.getfixturevalue("other_team")

    def user(self, role: str):
        if role == "anonymous":
            return None
        return self._request.getfixturevalue({"admin": "team_admin"}.get(role, role))

    def get(self, name: str):
        if name not in self._objects:
            self._objects[name] = OBJECTS[name](self)
        return self._objects[name]


PARAMS = [
    pytest.param(name, i, role, id=f"{name}[{i}]-{case.method}-{role}")
    for name in sorted(CASES)
    for i, case in enumerate(CASES[name])
    for role in ALL_ROLES
]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "index", "role"), PARAMS)
def test_authorization_matrix(name, index, role, request, client):
    case: Case = CASES[name][index]
    world = World(request)
    for r in ALL_ROLES:  # every role exists in every test, so "outsider" really is one among many
        world.user(r)
    kwargs = case.kwargs(world) if callable(case.kwargs) else case.kwargs
    url = reverse(name, kwargs=kwargs) + (f"?{case.query}" if case.query else "")
    user = world.user(role)
    if user is not None:
        client.force_login(user)
    data = case.data(world) if callable(case.data) else case.data
    call = getattr(client, case.method)
    if case.method == "get":
        response = call(url)
    elif case.json:
        response = call(url, data=json.dumps(data or {}), content_type="application/json")
    else:
        response = call(url, data=data or {})
    assert response.status_code == case.expected(role), (
        f"{case.method.upper()} {url} as {role}: got {response.status_code}, expected {case.expected(role)}"
    )
