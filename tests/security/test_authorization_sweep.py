"""Authorization sweep: EVERY URL pattern the resolver knows (ours, allauth's, the
Django admin's, and whatever other apps add later), its parameters filled with the
ids, uuids and names of objects belonging to domain A, requested by people who must
not reach A's data:

  admin of domain B  GET and POST  -> 403/404/405/redirect, or a page without A's data
  auditor            POST          -> 403/404/405 (a read page that ignores the method
                                      may answer 200), and the database is unchanged
  anonymous          GET and POST  -> redirect to a login page, 403/404/405
  mailbox owner      GET and POST  -> the same as anonymous on every staff page

and never a 500. Public pages are an explicit allowlist below, each with its reason.
"""

import pytest
from django.test import Client

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp
from tests.security.sweep import (
    DOMAIN_A_NAME,
    MARKER_A,
    all_routes,
    build_world,
    candidate_paths,
    candidates_for_domain,
    changed_tables,
    fingerprint,
    own_models,
)

# Routes anyone may reach (prefix of the route template or a route name), with the reason.
PUBLIC = {
    "accounts/": "allauth's own sign-in, reset, MFA and reauthentication flows: each page acts on the "
    "session's own user only and refuses or redirects anonymous users itself",
    "admin:login": "the Django admin's login entry (allauth's secure_admin_login sends it to our login)",
    "admin:logout": "signing out is harmless",
    "admin:jsi18n": "static translation catalogue of the admin",
    "oauth:authorize": "OAuth2 authorization endpoint: sends an anonymous owner to the portal sign-in",
    "oauth:token": "OAuth2 token endpoint: the client authenticates in the request (400/401 otherwise)",
    "oauth:revoke": "OAuth2 revocation endpoint: client-authenticated like the token endpoint",
    "oauth:introspect": "RFC 7662 introspection: authenticated by the request itself (400/401 otherwise)",
    ".well-known/": "OAuth/OpenID discovery documents: public metadata by definition",
    "portal:login": "the mailbox owners' sign-in page",
    "portal:login_totp": "the owners' second sign-in step (sends back to the sign-in without a pending password step)",
    "healthz": "liveness probe for load balancers, no data",
    "metrics": "Prometheus scrape endpoint, no per-domain data",
}
# Routes a signed-in staff user acts on for themselves only (allauth: own password, own
# authenticators, own sign-out): swept with GET, not POST, since a POST would end or
# change the sweeping session itself (e.g. sign it out) and hide later results.
SELF_SERVICE_PREFIXES = ("accounts/",)
SELF_SERVICE_NAMES = {"admin:logout", "admin:password_change"}
# Append-only logs that a refused request may legitimately write to.
LOGS = {"staff.AuditEntry"}
# What an owner's portal visits write by design: web sign-in events and their rollups.
OWNER_LOGS = {"monitoring.AuthEvent", "monitoring.Rollup"}

LOGIN_PATHS = ("/accounts/login/", "/django-admin/login/", "/my/login/", "/accounts/reauthenticate/")
# 400: the request was refused as malformed before anything was read or written.
REFUSED = {400, 401, 403, 404, 405, 429}


def is_public(route):
    return any(route.path_template.startswith(p) or route.name == p for p in PUBLIC)


def is_self_service(route):
    return route.path_template.startswith(SELF_SERVICE_PREFIXES) or route.name in SELF_SERVICE_NAMES


def leaks_a(response):
    if response.status_code != 200 or getattr(response, "streaming", False):
        return False
    body = response.content.decode("utf-8", "replace")
    return MARKER_A in body or DOMAIN_A_NAME in body


def redirects_to_login(response):
    return response.status_code == 302 and any(p in response["Location"] for p in LOGIN_PATHS)


@pytest.fixture
def world(db, domain_a, domain_b, admin_a):
    """One object of every model kind tied to domain A; the list of (route, path)."""
    domain_a.description = MARKER_A
    domain_a.save()
    # Singletons some pages create on first read (not a write by whoever reads first).
    for model in own_models():
        getter = getattr(model, "global_policy", None)
        if callable(getter):
            getter()
    built = build_world(domain_a)
    candidates = candidates_for_domain(domain_a)
    requests = []
    for route in all_routes():
        for path in candidate_paths(route, candidates):
            requests.append((route, path))
    return built, requests


def sweep(client, requests, method, check):
    problems = []
    for route, path in requests:
        response = client.generic(method, path, secure=False)
        if response.status_code >= 500:
            problems.append(f"{method} {path} ({route}): HTTP {response.status_code}")
            continue
        problem = check(route, path, response)
        if problem:
            problems.append(f"{method} {path} ({route}): {problem}")
    return problems


def test_the_sweep_covers_every_route(world):
    built, requests = world
    swept = {str(route) for route, _ in requests}
    routes = all_routes()
    # Only the Django admin's unnamed catch-all cannot be filled (it answers every path).
    unswept = [str(r) for r in routes if str(r) not in swept and "(?P<url>.*)" not in r.path_template]
    assert not unswept, f"routes the sweep cannot fill: {unswept}"
    assert any(model._meta.model_name == "domain" for model in built)


def test_admin_of_another_domain_never_sees_or_changes_domain_a(world, client_b, admin_b):
    _, requests = world
    before = fingerprint(exclude=LOGS)

    def check(route, path, response):
        if leaks_a(response):
            return "200 with domain A's data"
        return None

    problems = sweep(client_b, requests, "GET", check)
    problems += sweep(client_b, [(r, p) for r, p in requests if not is_self_service(r)], "POST", check)
    assert not problems, "\n".join(problems)
    assert not changed_tables(before, fingerprint(exclude=LOGS))
    assert client_b.get("/").wsgi_request.user == admin_b  # still signed in: the sweep was real


def test_auditor_writes_are_refused_and_change_nothing(world, auditor_client, auditor):
    _, requests = world
    before = fingerprint(exclude=LOGS)
    readable = {path for route, path in requests if auditor_client.get(path).status_code == 200}

    def check(route, path, response):
        if response.status_code in REFUSED or redirects_to_login(response):
            return None
        if response.status_code == 200 and path in readable:
            return None  # a read page that ignores the method; the fingerprint proves no write
        return f"HTTP {response.status_code} {response.get('Location', '')}"

    targets = [(r, p) for r, p in requests if not is_self_service(r) and not is_public(r)]
    problems = sweep(auditor_client, targets, "POST", check)
    assert not problems, "\n".join(problems)
    assert not changed_tables(before, fingerprint(exclude=LOGS))
    assert auditor_client.get("/").wsgi_request.user == auditor


def test_anonymous_clients_are_sent_to_login_everywhere_not_public(world):
    _, requests = world
    client = Client()
    before = fingerprint(exclude=LOGS)

    def check(route, path, response):
        if is_public(route):
            return None  # no 500 is all we ask of public pages
        if response.status_code in REFUSED or redirects_to_login(response):
            return None
        return f"HTTP {response.status_code} {response.get('Location', '')}"

    problems = sweep(client, requests, "GET", check) + sweep(client, requests, "POST", check)
    assert not problems, "\n".join(problems)
    assert not changed_tables(before, fingerprint(exclude=LOGS))


def test_a_staff_user_without_a_role_of_the_domain_sees_nothing(world, db):
    """An auditor restricted to domain B (not all domains) reads nothing of A."""
    _, requests = world
    user, _ = create_staff("auditor-b@staff.example", role=Role.AUDITOR, domains=[])
    add_totp(user)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")

    def check(route, path, response):
        return "200 with domain A's data" if leaks_a(response) else None

    problems = sweep(client, requests, "GET", check)
    assert not problems, "\n".join(problems)


OWNER_PASSWORD = "Violet-Harbour-correct-59"


def test_a_mailbox_owner_reaches_no_staff_page_and_nothing_of_domain_a(world, domain_b):
    """A signed-in owner of a mailbox in domain B (the portal, if this build has one)."""
    from django.urls import NoReverseMatch, reverse

    try:
        login_url = reverse("portal:login")
        from mailadmin.accounts.mailboxes import create_mailbox
    except (NoReverseMatch, ImportError):
        pytest.skip("no mailbox-owner portal in this build")
    _, requests = world
    create_mailbox(domain_b, "owner", password=OWNER_PASSWORD)
    client = Client()
    response = client.post(login_url, {"address": "owner@b.example", "password": OWNER_PASSWORD})
    assert response.status_code == 302, "the owner could not sign in to the portal"
    portal_prefix = login_url.rsplit("login/", 1)[0].lstrip("/")  # "my/"
    before = fingerprint(exclude=LOGS | OWNER_LOGS)

    def check(route, path, response):
        if leaks_a(response):
            return "200 with domain A's data"
        if route.path_template.startswith(portal_prefix) or is_public(route):
            return None  # the owner's own pages: answered, without A's data
        if response.status_code in REFUSED or redirects_to_login(response):
            return None
        return f"HTTP {response.status_code} {response.get('Location', '')} on a staff page"

    own_pages = [(r, p) for r, p in requests if r.path_template.startswith(portal_prefix) and not r.params]
    others = [(r, p) for r, p in requests if (r, p) not in own_pages]
    problems = sweep(client, requests, "GET", check)
    problems += sweep(client, [(r, p) for r, p in others if not is_public(r)], "POST", check)
    assert not problems, "\n".join(problems)
    assert not changed_tables(before, fingerprint(exclude=LOGS | OWNER_LOGS))
    # Still signed in at the end: the sweep ran as the owner throughout.
    assert client.get(f"/{portal_prefix}").status_code == 200
