"""Re-authentication for sensitive actions ("sudo mode").

The Content-Security-Policy comes from django-csp (settings, CONTENT_SECURITY_POLICY);
cookies, HSTS and session expiry are plain Django settings. What lives here is the
one rule for actions that must be confirmed with a credential entered in the last
ACCOUNT_REAUTHENTICATION_TIMEOUT seconds: allauth's own reauthentication flow, which
asks for the password (or a second factor), then replays the suspended POST.
"""

from allauth.account.decorators import reauthentication_required

# Use on a view whose every POST is sensitive (GETs show the form freely).
sensitive_post = reauthentication_required(allow_get=True)


def require_reauthentication(request) -> None:
    """For a view that is sensitive only for some inputs (decided after validation):
    raises allauth's ReauthenticationRequired, which its AccountMiddleware turns into
    a redirect to the re-authentication page and a replay of this POST afterwards."""
    reauthentication_required(_nothing)(request)


def _nothing(request):
    return None
