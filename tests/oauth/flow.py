"""Drive the authorization-code + PKCE flow over real HTTP, like a mail client would."""

import re
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import requests

from tests.oauth.helpers import PASSWORD, REDIRECT_URI, pkce_pair

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_of(response) -> str:
    match = _CSRF.search(response.text)
    assert match, f"no CSRF token on {response.url}"
    return match.group(1)


def sign_in(session: requests.Session, base: str, address: str, password: str = PASSWORD, next_url: str = ""):
    page = session.get(f"{base}/my/login/", params={"next": next_url} if next_url else None)
    return session.post(
        page.url,
        data={"csrfmiddlewaretoken": csrf_of(page), "address": address, "password": password, "next": next_url},
        headers={"Referer": page.url},
    )


def authorize(session, base, client_id, *, challenge, state="xyz", scope="smtp", extra=None):
    """GET the authorization URL (following the real redirects through the portal
    sign-in), then allow on the consent page. Returns the final redirect's query."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": state,
    }
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra or {})
    return get_local(session, f"{base}/oauth/authorize/?{urlencode(params)}", base)


def get_local(session, url, base):
    """GET, following redirects only while they stay on our server (the client's
    redirect URI has nothing listening; its response is returned unfollowed)."""
    response = session.get(url, allow_redirects=False)
    while response.is_redirect and urljoin(url, response.headers["Location"]).startswith(base):
        url = urljoin(url, response.headers["Location"])
        response = session.get(url, allow_redirects=False)
    return response


def redirect_query(response) -> dict:
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI), location
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def allow(session, consent, decision="allow"):
    response = session.post(
        consent.url,
        data={"csrfmiddlewaretoken": csrf_of(consent), "decision": decision},
        headers={"Referer": consent.url},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    return redirect_query(response)


def exchange(base, client_id, code, verifier, *, secret=None):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "client_id": client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    auth = (client_id, secret) if secret else None
    return requests.post(f"{base}/oauth/token/", data=data, auth=auth, timeout=10)


def full_flow(base, client_id, address, *, secret=None):
    """Sign in through the authorization redirect, consent, exchange: the token JSON."""
    session = requests.Session()
    verifier, challenge = pkce_pair()
    consent = authorize(session, base, client_id, challenge=challenge)
    # Not signed in yet: the portal login page, with the authorization URL as next.
    assert consent.status_code == 200 and "/my/login/" in consent.url
    next_url = parse_qs(urlparse(consent.url).query)["next"][0]
    consent = sign_in(session, base, address, next_url=next_url)
    assert consent.url.startswith(f"{base}/oauth/authorize/"), consent.url
    query = allow(session, consent)
    response = exchange(base, client_id, query["code"], verifier, secret=secret)
    assert response.status_code == 200, response.text
    return response.json()
