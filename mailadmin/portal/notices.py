"""The owner's choice about "new sign-in" notices, for whoever sends them
(monitoring's owner notices): one call, default on."""


def wants_new_signin_notice(mailbox_id: int) -> bool:
    from mailadmin.portal.models import OwnerSettings

    value = OwnerSettings.objects.filter(mailbox_id=mailbox_id).values_list("notify_new_signin", flat=True).first()
    return True if value is None else bool(value)
