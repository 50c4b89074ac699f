"""The owner's own login history, from monitoring's auth events."""


def login_history(mailbox, limit: int = 100):
    """Newest first; filtered by the signed-in mailbox's address and nothing else."""
    try:
        from mailadmin.monitoring.models import AuthEvent
    except ImportError:  # monitoring not installed in this build
        return []
    return list(AuthEvent.objects.filter(username__iexact=mailbox.address).order_by("-ts")[:limit])
