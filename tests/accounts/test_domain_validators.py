import pytest
from django.core.exceptions import ValidationError

from mailadmin.accounts.validators import normalize_domain_name, unicode_domain_name


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.com.", "example.com"),
        ("  mail.example.org ", "mail.example.org"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("straße.de", "xn--strae-oqa.de"),
    ],
)
def test_names_are_stored_as_a_labels(typed, stored):
    assert normalize_domain_name(typed) == stored


@pytest.mark.parametrize(
    "bad", ["", "example", "a..b", "-a.com", "a-.com", "a_b.com", "1.2.3.4", "x@y.com", "xn--zz.com", "a" * 64 + ".com"]
)
def test_bad_names_raise_a_validation_error(bad):
    with pytest.raises(ValidationError):
        normalize_domain_name(bad)


def test_too_long_names_are_refused():
    with pytest.raises(ValidationError):
        normalize_domain_name(".".join(["a" * 60] * 5))


def test_unicode_display_name():
    assert unicode_domain_name("xn--strae-oqa.de") == "straße.de"
    assert unicode_domain_name("plain.example") == "plain.example"
