import datetime as dt
import time

import pytest
from django.utils import timezone

from mailadmin.monitoring import blocks
from mailadmin.monitoring.blocks import check_source, create_block
from mailadmin.monitoring.models import AllowedNetwork, Block


def settled(decide, deadline=1.0):
    """check_source promises every process sees a change within a second: poll for it."""
    end = time.monotonic() + deadline
    while True:
        decision = decide()
        if decision.blocked or decision.allowlisted or time.monotonic() > end:
            return decision
        time.sleep(0.05)


@pytest.mark.embedded
@pytest.mark.django_db
def test_ip_prefix_and_pair_blocks_are_enforced():
    ip_block = create_block("ip", "203.0.113.9", reason="brute force")
    create_block("prefix", "198.51.100.0/24", reason="spray")
    create_block("ip_user", "192.0.2.5", username="ann@a.example", reason="account attack")
    d = settled(lambda: check_source("203.0.113.9", None))
    assert d.blocked and d.block_id == ip_block.pk and d.reason == "brute force"
    assert check_source("198.51.100.77", "bob@a.example").blocked
    assert check_source("192.0.2.5", "ANN@a.example").blocked
    assert not check_source("192.0.2.5", "bob@a.example").blocked
    assert not check_source("203.0.113.10", None).blocked


@pytest.mark.django_db
def test_allowlisted_networks_always_win():
    create_block("ip", "203.0.113.9", reason="brute force")
    AllowedNetwork.objects.create(cidr="203.0.113.0/24", note="office")
    d = settled(lambda: check_source("203.0.113.9", "ann@a.example"))
    assert not d.blocked and d.allowlisted
    # and no new block is ever created on an allowlisted network
    assert create_block("ip", "203.0.113.50", reason="x") is None
    assert create_block("prefix", "203.0.0.0/16", reason="x") is None


@pytest.mark.django_db
def test_repeat_offenders_escalate_up_to_a_week_and_blocks_expire():
    now = timezone.now()
    durations = []
    for _ in range(12):
        block = create_block("ip", "203.0.113.9", reason="again", now=now)
        durations.append(block.expires_at - block.created)
        assert create_block("ip", "203.0.113.9", reason="again", now=now) == block  # no double escalation
        now = block.expires_at + dt.timedelta(seconds=1)
    assert durations[:4] == [dt.timedelta(minutes=15 * 2**i) for i in range(4)]
    assert durations[-1] == dt.timedelta(days=7)
    Block.objects.all().update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    blocks.bump_version()
    end = time.monotonic() + 1.0
    while check_source("203.0.113.9", None).blocked:
        assert time.monotonic() < end
        time.sleep(0.05)


@pytest.mark.django_db
def test_a_block_made_elsewhere_is_seen_within_a_second():
    assert not check_source("203.0.113.77", None).blocked
    # Written straight to the table by "another process", then the shared stamp bumped.
    Block.objects.bulk_create(
        [Block(kind="ip", value="203.0.113.77", reason="x", expires_at=timezone.now() + dt.timedelta(hours=1))]
    )
    from django.core.cache import cache

    cache.set(blocks.VERSION_KEY, time.time_ns(), timeout=None)
    deadline = time.monotonic() + 1.0
    while not check_source("203.0.113.77", None).blocked:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_a_process_that_polls_before_the_commit_still_sees_the_block_after_it():
    """The detectors create blocks inside their transaction; Block.save bumps the stamp
    before the commit. A process that polls in between reloads without the block and must
    still see it right after the commit, not at the next full reload a minute later."""
    from django.db import transaction

    from tests.smtpd.conftest import committed_call

    with transaction.atomic():
        Block.objects.create(
            kind="ip", value="203.0.113.88", reason="x", expires_at=timezone.now() + dt.timedelta(hours=1)
        )
        # "Another process" (its own connection) polls now: it cannot see the row yet.
        time.sleep(blocks.POLL_SECONDS)
        assert not committed_call(check_source, "203.0.113.88", None).blocked
    deadline = time.monotonic() + 1.0
    while not committed_call(check_source, "203.0.113.88", None).blocked:
        assert time.monotonic() < deadline, "the committed block was not picked up"
        time.sleep(0.05)
