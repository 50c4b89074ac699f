"""Staff users (the people who log in to the dashboard), their roles, and the audit log."""

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    SUPERADMIN = "superadmin", "Superadmin"
    DOMAIN_ADMIN = "domain_admin", "Domain admin"
    AUDITOR = "auditor", "Auditor"


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email, password=None, **extra):
        if not email:
            raise ValueError("Staff users need an email address")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra):
        extra.setdefault("role", Role.SUPERADMIN)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField("email address", unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DOMAIN_ADMIN)
    # Domain admins manage these; auditors read these unless all_domains is set.
    domains = models.ManyToManyField("accounts.Domain", blank=True, related_name="staff")
    all_domains = models.BooleanField(
        default=False, help_text="Auditors only: read every domain instead of the assigned ones."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    class Meta:
        ordering = ["email"]

    def __str__(self):
        return self.email

    @property
    def is_staff(self):
        # Only superadmins may enter the Django admin site.
        return self.is_active and self.role == Role.SUPERADMIN

    @property
    def is_superadmin(self):
        return self.is_active and self.role == Role.SUPERADMIN

    @property
    def is_auditor(self):
        return self.role == Role.AUDITOR

    @property
    def can_write(self):
        return self.is_active and self.role in (Role.SUPERADMIN, Role.DOMAIN_ADMIN)

    @property
    def sees_all_domains(self):
        return self.is_superadmin or (self.role == Role.AUDITOR and self.all_domains)

    def has_perm(self, perm, obj=None):
        return self.is_superadmin or super().has_perm(perm, obj)

    def has_module_perms(self, app_label):
        return self.is_superadmin or super().has_module_perms(app_label)


class AuditEntryQuerySet(models.QuerySet):
    def visible_to(self, user):
        """The one scoping rule for the audit log (page and CSV export): superadmins and
        all-domain auditors see everything; others see the entries of their domains
        plus their own (their logins, their MFA changes). Global entries about other
        people (staff changes, others' logins) stay with superadmins."""
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.sees_all_domains:
            return self
        return self.filter(models.Q(domain__in=user.domains.all()) | models.Q(actor=user))


class AuditEntry(models.Model):
    """One change made by staff, as structured data (filterable, exportable)."""

    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        DELETE = "delete"
        ROLE_CHANGE = "role_change"
        LOGIN = "login"
        LOGIN_FAILED = "login_failed"
        LOGOUT = "logout"
        MFA_CHANGE = "mfa_change"
        PASSWORD_CHANGE = "password_change"
        ACTION = "action"

    created = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices, db_index=True)
    object_kind = models.CharField(max_length=50, blank=True, db_index=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    # Scoping: the domain the change concerns (null = global, superadmin/all-domain auditors only).
    domain = models.ForeignKey("accounts.Domain", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    domain_name = models.CharField(max_length=253, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["object_kind", "object_id"])]

    def __str__(self):
        return f"{self.created:%Y-%m-%d %H:%M} {self.actor_email} {self.action} {self.object_kind} {self.object_repr}"
