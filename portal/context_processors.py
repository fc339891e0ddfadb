from django.conf import settings


def portal(request):
    """Navigation flags (what the user's roles allow) and the run mode, for the base layout.
    The flags only decide what is shown; every view checks again through governance.access."""
    from governance import access

    user = getattr(request, "user", None)
    nav = access.navigation_for(user) if user is not None and user.is_authenticated else {}
    return {
        "nav": nav,
        "embedded_mode": settings.EMBEDDED,
        "gpu_source_simulated": settings.PORTAL_GPU_SOURCE.startswith("simulated"),
    }
