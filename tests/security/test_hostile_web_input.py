"""Hostile input to every page: each URL the resolver knows (filled with real ids),
POSTed as a superadmin and a domain admin with junk in every field its forms name
(huge strings, NUL bytes, invalid UTF-8, wrong types, repeated and missing fields,
junk files), JSON bodies that are not JSON or not the right shape, and query strings
full of the same. Whatever the page, the answer is never a 500, and markup typed
into a field never comes back unescaped."""

from html.parser import HTMLParser

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.security.sweep import all_routes, build_world, candidate_paths, candidates_for_domain

SCRIPT = "<script>alert('x')</script>"
JUNK_VALUES = [
    "",
    "x" * 100_000,
    "a\x00b",
    "-1",
    "99999999999999999999999999",
    "NaN",
    SCRIPT,
    "../../etc/passwd\u202e\ufeff\U0001f4a9",
]
RAW_BODIES = [  # (content type, body) sent as they are
    ("application/x-www-form-urlencoded", b"q=%FF%FE%ED%A0%80&name=%C0%AF&email=%00"),
    ("application/x-www-form-urlencoded", b"&&&==&%&%%%"),
    ("application/json", b'{"a": ['),
    ("application/json", b"[]"),
    ("application/json", b'{"id": {"$gt": ""}, "events": "not a list", "count": 1e999}'),
    ("application/json", b"[" * 5000 + b"]" * 5000),
    ("application/json", b"\xff\xfe\x00"),
    ("multipart/form-data; boundary=zzz", b'--zzz\r\nContent-Disposition: form-data; name="x"\r\n\r\n'),
    ("text/csv", b"\x00\x01\x02" * 1000),
]
JUNK_FILES = [b"", b"\xff\xfe\x00bad encoding\x00", b"email,password\n" + b"x" * 200_000 + b"\n", b"a,b\n" * 20_000]
QUERY_KEYS = ["q", "page", "sort", "order", "from", "to", "since", "until", "range", "period", "format", "next"]
# Self-service pages that would end or change the sweeping session (sign out, drop its MFA).
SKIP_PREFIXES = ("accounts/logout", "accounts/2fa/totp/deactivate", "accounts/2fa/webauthn/keys", "django-admin/logout")


class FieldNames(HTMLParser):
    def __init__(self):
        super().__init__()
        self.names, self.files = set(), set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("input", "select", "textarea") and attrs.get("name"):
            if attrs.get("type") == "file":
                self.files.add(attrs["name"])
            elif attrs["name"] != "csrfmiddlewaretoken":
                self.names.add(attrs["name"])


def form_fields(client, path):
    response = client.get(path)
    parser = FieldNames()
    if response.status_code == 200 and "html" in response.get("Content-Type", ""):
        parser.feed(response.content.decode("utf-8", "replace"))
    return parser.names, parser.files


def payloads(names, files):
    yield {}  # every field missing
    for value in JUNK_VALUES:
        yield {name: value for name in names}
    yield {name: ["1", "2", SCRIPT] for name in names}  # one field, many values
    for content in JUNK_FILES:
        if files:
            data = {name: "1" for name in names}
            data.update({name: SimpleUploadedFile("junk.csv", content, "text/csv") for name in files})
            yield data


def hostile_requests(client, path, route):
    """(description, response) for every junk request to path."""
    names, files = form_fields(client, path)
    for data in payloads(names, files):
        yield f"POST form {sorted(data)[:4]}", client.post(path, data)
    for content_type, body in RAW_BODIES:
        yield f"POST {content_type} {body[:20]!r}", client.generic("POST", path, body, content_type=content_type)
    for value in ["\x00", "x" * 10_000, "-1", "99999999999999999999", SCRIPT]:
        query = {key: value for key in [*QUERY_KEYS, *names]}
        yield f"GET ?{value[:10]!r}", client.get(path, query)


def echoes_markup(response):
    streaming = getattr(response, "streaming", False)
    return response.status_code == 200 and not streaming and SCRIPT.encode() in response.content


def check_responses(client, targets):
    client.raise_request_exception = False  # collect every 500 instead of stopping at the first
    problems = []
    for route, path in targets:
        for what, response in hostile_requests(client, path, route):
            if response.status_code >= 500:
                problems.append(f"{path} ({route}) {what}: HTTP {response.status_code}")
            elif echoes_markup(response):
                problems.append(f"{path} ({route}) {what}: markup echoed unescaped")
    return problems


@pytest.fixture
def targets(db, domain_a):
    build_world(domain_a)
    candidates = candidates_for_domain(domain_a)
    found = []
    for route in all_routes():
        if route.path_template.startswith(SKIP_PREFIXES):
            continue
        # One filling per route is enough here: the point is the input, not the object.
        found += [(route, path) for path in candidate_paths(route, candidates)[:1]]
    return found


def test_superadmin_junk_everywhere_never_500s(super_client, targets):
    problems = check_responses(super_client, targets)
    assert not problems, "\n".join(problems)


def test_domain_admin_junk_everywhere_never_500s(client_a, targets):
    # The Django admin is superadmin-only (403 for a domain admin): swept above.
    problems = check_responses(client_a, [(r, p) for r, p in targets if not p.startswith("/django-admin/")])
    assert not problems, "\n".join(problems)


@pytest.mark.embedded
def test_anonymous_junk_on_public_pages_never_500s(client, db):
    targets = [(r, p) for r in all_routes() if not r.params for p in candidate_paths(r, {})][:40]
    problems = check_responses(client, [(r, p) for r, p in targets if not r.path_template.startswith(SKIP_PREFIXES)])
    assert not problems, "\n".join(problems)


@pytest.mark.embedded
def test_nul_bytes_get_a_clear_400(super_client):
    response = super_client.get("/domains/", {"q": "a\x00b"})
    assert response.status_code == 400 and b"NUL character" in response.content
    response = super_client.post("/domains/new/", {"name": "x\x00.example"})
    assert response.status_code == 400
    response = super_client.generic("POST", "/domains/new/", b'{"name": "\\u0000"}', content_type="application/json")
    assert response.status_code == 400
    assert super_client.get("/domains/", {"q": "fine"}).status_code == 200
