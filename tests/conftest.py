"""Every test gets a cache folder of its own: nothing a test scans or downloads lands in the
user's `~/.cache`, and no test sees another's cache."""

import pytest


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("POLYMODAL_CACHE", str(folder))
    return folder
