import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One artefact cache (digits world, CLIP, localizer) for the whole test session."""
    path = Path(os.environ.get("CVPDL_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    return path
