"""Production serves hashed, compressed static files (`make web` runs collectstatic with
STATIC_MANIFEST=1): every vendored asset and every reference inside it must resolve."""

from django.core.management import call_command
from django.templatetags.static import static


def test_manifest_collectstatic_succeeds_and_resolves_hashed_names(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
    call_command("collectstatic", interactive=False, verbosity=0)
    assert (tmp_path / "staticfiles.json").exists()
    url = static("vendor/chart.umd.min.js")
    assert url != "/static/vendor/chart.umd.min.js" and url.endswith(".js")
    assert (tmp_path / url.removeprefix(settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/" + settings.STATIC_URL)).exists()
