"""Re-authentication for sensitive actions ("sudo mode").

The Content-Security-Policy comes from django-csp (settings, CONTENT_SECURITY_POLICY);
cookies, HSTS and session expiry are plain Django settings. What lives here is the
one rule for actions that must be confirmed with a credential entered in the last
ACCOUNT_REAUTHENTICATION_TIMEOUT seconds: allauth's own reauthentication flow, which
asks for the password (or a second factor), then replays the suspended POST.
"""

from allauth.account.decorators import reauthentication_required
from django.http import HttpResponseBadRequest

# Use on a view whose every POST is sensitive (GETs show the form freely).
sensitive_post = reauthentication_required(allow_get=True)


def require_reauthentication(request) -> None:
    """For a view that is sensitive only for some inputs (decided after validation):
    raises allauth's ReauthenticationRequired, which its AccountMiddleware turns into
    a redirect to the re-authentication page and a replay of this POST afterwards."""
    reauthentication_required(_nothing)(request)


def _nothing(request):
    return None


class RejectNulBytesMiddleware:
    """NUL characters are never meaningful input, and PostgreSQL refuses them in text
    (a search for "a\\x00b" would otherwise be a 500): answer 400 before any view runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if _has_nul(request):
            return HttpResponseBadRequest("Bad request: the input contains a NUL character.", content_type="text/plain")
        return self.get_response(request)


def _has_nul(request) -> bool:
    if "\x00" in request.path or any("\x00" in v for vs in request.GET.lists() for v in [vs[0], *vs[1]]):
        return True
    if request.method != "POST":
        return False
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            return any("\x00" in v for vs in request.POST.lists() for v in [vs[0], *vs[1]])
        except Exception:  # noqa: BLE001 - a malformed body is the view's (and CSRF's) to refuse
            return False
    try:
        body = request.body
    except Exception:  # noqa: BLE001 - body too large etc.: Django answers that itself
        return False
    return b"\x00" in body or b"\\u0000" in body
