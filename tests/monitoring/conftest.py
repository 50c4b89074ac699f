import pytest

from mailadmin.monitoring import blocks, enrich


@pytest.fixture(autouse=True)
def fresh_snapshots():
    """Each test's database starts empty: drop the in-process caches of blocks and networks."""
    blocks._snapshot.invalidate_local()
    blocks._recent.clear()
    enrich._named.invalidate()
    yield
    blocks._snapshot.invalidate_local()
    enrich._named.invalidate()
