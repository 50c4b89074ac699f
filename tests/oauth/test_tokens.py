import pytest
from django.db import DatabaseError, connection, transaction
from oauth2_provider.models import revoke_access_token

from mailadmin.accounts.models import Mailbox
from mailadmin.oauth.models import AccessToken
from mailadmin.oauth.tokens import MAX_TOKEN_OCTETS, check_bearer
from tests.oauth.helpers import issue_token, make_application, make_mailbox


@pytest.fixture
def alice(domain_a):
    return make_mailbox(domain_a, "alice")


@pytest.fixture
def app(db):
    return make_application()


@pytest.mark.embedded
def test_it_accepts_a_valid_token_and_records_last_use(alice, app):
    row, raw = issue_token(alice, app)
    check = check_bearer(raw, "alice@a.example")
    assert check.ok and check.reason == "success"
    assert (check.mailbox_id, check.token_id) == (alice.pk, row.pk)
    row.refresh_from_db()
    assert row.last_used is not None


@pytest.mark.embedded
def test_tokens_are_stored_hashed_only(alice, app):
    row, raw = issue_token(alice, app)
    stored = AccessToken.objects.get(pk=row.pk)
    assert stored.token == ""
    assert raw not in stored.token_checksum


def test_the_named_user_is_compared_like_an_address(alice, app):
    _, raw = issue_token(alice, app)
    assert check_bearer(raw, "ALICE@A.Example.").ok


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"expires_in": -1}, "expired"),
        ({"scope": "read"}, "scope"),
        ({"resource": ["https://other.example/"]}, "wrong_audience"),
    ],
)
def test_it_refuses_unusable_tokens(alice, app, kwargs, detail):
    row, raw = issue_token(alice, app, **kwargs)
    check = check_bearer(raw, "alice@a.example")
    assert (check.reason, check.detail, check.token_id) == ("bad_credentials", detail, row.pk)


def test_it_refuses_another_mailboxs_token(alice, app, domain_a):
    make_mailbox(domain_a, "bob")
    _, raw = issue_token(alice, app)
    check = check_bearer(raw, "bob@a.example")
    assert (check.reason, check.detail, check.mailbox_id) == ("bad_credentials", "wrong_user", None)


def test_revocation_takes_effect_on_the_next_check(alice, app):
    row, raw = issue_token(alice, app)
    assert check_bearer(raw, "alice@a.example").ok
    revoke_access_token(row)
    check = check_bearer(raw, "alice@a.example")
    assert (check.reason, check.detail, check.token_id) == ("bad_credentials", "unknown", None)


def test_a_suspended_mailbox_is_refused(alice, app):
    _, raw = issue_token(alice, app)
    Mailbox.objects.filter(pk=alice.pk).update(state=Mailbox.State.SUSPENDED)
    check = check_bearer(raw, "alice@a.example")
    assert (check.reason, check.detail) == ("disabled", "mailbox_inactive")


def test_a_disabled_application_is_refused(alice, app):
    _, raw = issue_token(alice, app)
    app.is_enabled = False
    app.save()
    assert check_bearer(raw, "alice@a.example").detail == "app_disabled"


def test_an_application_bound_to_another_domain_is_refused(alice, domain_b):
    other = make_application(domain=domain_b)
    _, raw = issue_token(alice, other)
    assert check_bearer(raw, "alice@a.example").detail == "app_disabled"


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("", "syntax"),
        ("has space", "syntax"),
        ("tok\x00en", "syntax"),
        ("ä" * 10, "syntax"),
        (None, "syntax"),
        ("a" * (MAX_TOKEN_OCTETS + 1), "too_long"),
    ],
)
def test_malformed_tokens_are_refused_before_any_lookup(db, token, detail, django_assert_num_queries):
    with django_assert_num_queries(0):
        check = check_bearer(token, "alice@a.example")
    assert (check.reason, check.detail) == ("malformed", detail)


def test_a_token_of_the_maximum_size_is_looked_up(db):
    assert check_bearer("a" * MAX_TOKEN_OCTETS, "alice@a.example").detail == "unknown"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL's aborted-transaction state")
def test_a_database_error_is_a_temporary_failure_and_never_raises(alice, app, caplog):
    _, raw = issue_token(alice, app)
    with transaction.atomic():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        except DatabaseError:
            pass
        # The transaction is now aborted: every query fails, as during an outage.
        check = check_bearer(raw, "alice@a.example")
        transaction.set_rollback(True)
    assert (check.reason, check.detail) == ("temp_failure", "error")
    assert raw not in caplog.text
