"""CSV import (dry run listing every bad row, all-or-nothing import, one-time
result file) and the scoped, streamed export."""

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mailadmin.accounts.models import Mailbox
from mailadmin.accounts.verify import verify_password

from .conftest import GOOD_PASSWORD


def _upload(client, content: bytes, name="mailboxes.csv"):
    return client.post(reverse("mailboxes:csv_import"), {"file": SimpleUploadedFile(name, content, "text/csv")})


def _errors(response):
    return [(line, message) for line, message in response.context["errors"]]


def test_dry_run_lists_every_bad_row(client_a, domain_a, domain_b, mailbox_a):
    domain_a.max_mailboxes = 3  # alice exists; the file adds 3 good rows → over the limit
    domain_a.save()
    content = (
        b"address,display_name,password,send_rate_per_hour\n"
        b"carol@a.example,Carol,,\n"  # 2 ok
        b"not-an-address,,,\n"  # 3 bad address
        b"alice@a.example,,,\n"  # 4 duplicate of an existing mailbox
        b"carol@A.example,,,\n"  # 5 duplicate within the file
        b"dave@a.example,,password,\n"  # 6 weak password
        b"erin@b.example,,,\n"  # 7 domain out of scope
        b"frank@a.example,,,0\n"  # 8 bad rate
        b"gina@a.example,,,,extra\n"  # 9 wrong number of columns
        b"hal@a.example,Hal,,10\n"  # 10 ok
        b"ivy@a.example,Ivy,,\n"  # 11 ok, but over the domain limit
    )
    response = _upload(client_a, content)
    assert response.status_code == 200
    errors = _errors(response)
    lines = {line for line, _ in errors}
    assert lines == {3, 4, 5, 6, 7, 8, 9, 11}
    text = " ".join(message for _, message in errors)
    for words in (
        "bad address",
        "already exists",
        "duplicate of line 2",
        "weak password",
        "not one you manage",
        "positive whole number",
        "wrong number of columns",
        "over the domain limit",
    ):
        assert words in text, words
    assert "token" not in response.context
    assert Mailbox.objects.count() == 1


def test_wrong_columns_and_bad_encoding_and_empty(client_a, domain_a):
    errors = _errors(_upload(client_a, b"email,name\nx@a.example,X\n"))
    assert errors[0][0] == 1 and "wrong columns" in errors[0][1] and "missing column(s): address" in errors[0][1]
    errors = _errors(_upload(client_a, "address\nok@a.example\nb\xe4d@a.example\n".encode("latin-1")))
    assert errors == [(3, "not valid UTF-8 (save the file as UTF-8 CSV)")]
    assert "The submitted file is empty" in _upload(client_a, b"").content.decode()
    assert "the file has no mailbox rows" in _errors(_upload(client_a, b"address\n"))[0][1]


def test_file_over_the_size_limit_is_refused(client_a, settings):
    settings.MAILBOX_CSV_MAX_BYTES = 2048
    response = _upload(client_a, b"address\n" + b"x@a.example\n" * 400)
    assert response.status_code == 400
    assert "the limit is 2 KB" in response.content.decode()


def test_import_is_all_or_nothing_and_returns_passwords_once(client_a, domain_a):
    content = f"address,display_name,password\ncarol@a.example,Carol,\ndave@a.example,Dave,{GOOD_PASSWORD}\n".encode()
    preview = _upload(client_a, content)
    assert preview.context["errors"] == [] and len(preview.context["rows"]) == 2
    assert Mailbox.objects.count() == 0  # dry run writes nothing
    done = client_a.post(reverse("mailboxes:csv_import_confirm"), {"token": preview.context["token"]})
    assert done.status_code == 200 and Mailbox.objects.count() == 2
    assert verify_password("dave@a.example", GOOD_PASSWORD).ok
    result_url = reverse("mailboxes:csv_import_result", args=[done.context["token"]])
    download = client_a.get(result_url)
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    carol = next(r for r in rows if r["address"] == "carol@a.example")
    assert verify_password("carol@a.example", carol["password"]).ok
    assert next(r for r in rows if r["address"] == "dave@a.example")["password"] == ""
    assert client_a.get(result_url).status_code == 404  # once only
    # The same preview cannot be imported twice.
    again = client_a.post(reverse("mailboxes:csv_import_confirm"), {"token": preview.context["token"]})
    assert again.status_code == 302 and Mailbox.objects.count() == 2


def test_import_rechecks_and_writes_nothing_if_a_row_became_bad(client_a, domain_a, make_mailbox):
    preview = _upload(client_a, b"address\ncarol@a.example\ndave@a.example\n")
    make_mailbox(domain_a, "dave")  # someone else created it after the preview
    response = client_a.post(reverse("mailboxes:csv_import_confirm"), {"token": preview.context["token"]})
    assert response.status_code == 400
    assert not Mailbox.objects.filter(local_part="carol").exists()


def test_token_of_another_user_is_useless(client, admin_a, superadmin, domain_a):
    client.force_login(admin_a, backend="django.contrib.auth.backends.ModelBackend")
    preview = _upload(client, b"address\ncarol@a.example\n")
    client.force_login(superadmin, backend="django.contrib.auth.backends.ModelBackend")
    response = client.post(reverse("mailboxes:csv_import_confirm"), {"token": preview.context["token"]})
    assert response.status_code == 302 and not Mailbox.objects.exists()


@pytest.mark.embedded
def test_export_is_scoped_and_streamed(client_a, mailbox_a, mailbox_b):
    response = client_a.get(reverse("mailboxes:csv_export"))
    assert response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["address"] for r in rows] == ["alice@a.example"]
    assert "password" not in rows[0]
