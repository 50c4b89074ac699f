import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Rate-limit counters live in the shared cache: every test starts from zero.
    cache.clear()
    yield
    cache.clear()
