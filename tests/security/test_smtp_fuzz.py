"""Bounded fuzz of the live SMTP dialogue (a fixed budget; bench/fuzz_smtp.py runs
the same grammar for longer): the real smtpd process, over real TLS sockets, gets
hostile command and AUTH sequences; every reply is well formed, no handler raises,
the server stays up, a real client still authenticates afterwards, and the log has
no traceback and none of the secrets."""

import os
import smtplib
import ssl

import pytest
from hypothesis import HealthCheck, given, settings

from tests.security.smtp_fuzz import dialogue, run_dialogue, server_is_healthy
from tests.smtpd.conftest import PASSWORD, committed, module_accounts, smtpd_factory  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
# The CI budget; bench/fuzz_smtp.py raises it through the environment.
EXAMPLES = int(os.environ.get("SMTP_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def fuzz_server(smtpd_factory, module_accounts):  # noqa: F811
    return smtpd_factory(
        SMTPD_AUTH_FAIL_DELAY="0",
        SMTPD_MAX_AUTH_FAILURES="1000",
        SMTPD_AUTH_RATE_PER_IP="1000000",
        SMTPD_SESSION_TIMEOUT="10",
    )


def test_hostile_dialogues_get_well_formed_replies_and_the_server_survives(fuzz_server, module_accounts):  # noqa: F811
    problems = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(dialogue)
    def play(lines):
        found = run_dialogue(fuzz_server.tls, lines)
        if found:
            problems.append((lines, found))
        assert not found, found

    play()
    assert not problems
    assert server_is_healthy(fuzz_server.tls)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", fuzz_server.tls, context=context, timeout=10) as client:
        assert client.login("alice@send.example", PASSWORD)[0] == 235
    logs = fuzz_server.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 500 :][:3000]
