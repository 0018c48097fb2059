"""Suite-wide settings: headless plotting and hypothesis profiles sized for a 2-core CI."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session):
    """In CI the compiled op must be there: its tests skip elsewhere, but must never skip silently
    there. With BLENDMASK_REQUIRE_CUDA=1 (the GPU acceptance run, .ci/gpu) a GPU and the CUDA
    kernels must be there too, so the CUDA tests run instead of skipping."""
    from blendmask import _extension

    if _flag("CI") and not _extension.extension_loaded():
        raise RuntimeError(f"CI=true but blendmask._C is not built: {_extension.load_error()}")
    if _flag("BLENDMASK_REQUIRE_CUDA"):
        import torch

        if not (torch.cuda.is_available() and _extension.has_kernel("cuda")):
            raise RuntimeError(
                "BLENDMASK_REQUIRE_CUDA=1 but no GPU is visible or blendmask._C has no CUDA kernels "
                f"(cuda available: {torch.cuda.is_available()}, load error: {_extension.load_error()})")


@pytest.fixture(autouse=True)
def _records_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Every test keeps the COCO records cache (``$BLENDMASK_CACHE``) in a temporary directory,
    never in the user's cache directory; child processes inherit it through the environment."""
    monkeypatch.setenv("BLENDMASK_CACHE", str(tmp_path_factory.mktemp("records-cache")))
