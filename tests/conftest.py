"""Suite-wide settings: headless plotting and hypothesis profiles sized for a 2-core CI."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_sessionstart(session):
    """In CI the compiled op must be there: its tests skip elsewhere, but must never skip silently there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        from blendmask import _extension

        if not _extension.extension_loaded():
            raise RuntimeError(f"CI=true but blendmask._C is not built: {_extension.load_error()}")
