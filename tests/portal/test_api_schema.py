"""The OpenAPI schema generates without warnings and the docs page is self-contained (no CDN)."""

import pytest
from django.core.management import call_command


def test_schema_generates_without_warnings(tmp_path):
    # --fail-on-warn turns any drf-spectacular warning (an unresolvable serializer, an enum name
    # collision, an unknown authenticator) into an error.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    schema = (tmp_path / "schema.yaml").read_text()
    for path in ("/api/v1/me/", "/api/v1/teams/{slug}/memberships/{id}/", "/api/v1/tokens/{id}/"):
        assert path in schema
    assert "bearerToken" in schema


@pytest.mark.django_db
def test_schema_endpoint_and_docs_render_without_a_cdn(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"openapi: 3" in schema.content
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "/static/drf_spectacular_sidecar/" in docs
    assert "cdn." not in docs and "unpkg" not in docs
