"""A clear "database unavailable" page instead of a generic 500.

Django's handler500 runs inside the exception handler, so the exception that
broke the request is at hand: a database that cannot be reached (stopped for
maintenance, restarting, network partition) gets a 503 with Retry-After and its
own page; every other error keeps the standard 500 page.
"""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.template import loader
from django.views.defaults import server_error as default_server_error

log = logging.getLogger(__name__)
DATABASE_DOWN = (OperationalError, InterfaceError)


def server_error(request, *args, **kwargs):
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_DOWN):
        log.warning("database unavailable, answering 503: %s", type(exc).__name__)
        from django.http import HttpResponse

        # The standalone template needs no database (no user, no session).
        response = HttpResponse(loader.get_template("503.html").render(), status=503)
        response["Retry-After"] = "30"
        return response
    return default_server_error(request, *args, **kwargs)
