"""Forms for staff management and the audit log filters."""

from django import forms

from mailadmin.accounts.forms import BootstrapMixin
from mailadmin.accounts.models import Domain
from mailadmin.staff.models import AuditEntry, Role, User


class StaffForm(BootstrapMixin, forms.ModelForm):
    domains = forms.ModelMultipleChoiceField(
        queryset=Domain.objects.all(),
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 8}),
        help_text="Domain admins manage these; auditors read these unless 'all domains' is set.",
    )

    class Meta:
        model = User
        fields = ["email", "full_name", "role", "domains", "all_domains"]
        labels = {"all_domains": "All domains (auditors)"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # The email is the login; changing it is a separate, verified flow.
            del self.fields["email"]
        self._style_fields()

    def clean_email(self):
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("A staff user with this email already exists.")
        return email

    def clean(self):
        cleaned = super().clean()
        role = cleaned.get("role")
        if role == Role.DOMAIN_ADMIN and not cleaned.get("domains"):
            self.add_error("domains", "A domain admin needs at least one domain.")
        if role != Role.AUDITOR:
            cleaned["all_domains"] = False
        if role == Role.SUPERADMIN:
            cleaned["domains"] = Domain.objects.none()
        return cleaned


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=254, label="Actor email contains")
    action = forms.ChoiceField(required=False, choices=[("", "any action"), *AuditEntry.Action.choices])
    object_kind = forms.CharField(required=False, max_length=50, label="Object kind")
    object_id = forms.CharField(required=False, max_length=64, label="Object id")
    since = forms.DateTimeField(
        required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, label="Until", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            is_choice = isinstance(field, forms.ChoiceField)
            css = "form-select form-select-sm" if is_choice else "form-control form-control-sm"
            field.widget.attrs.setdefault("class", css)

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "'Until' must be after 'From'.")
        return cleaned

    def apply(self, queryset):
        """Filter a queryset that is already scoped to the user (call after is_valid())."""
        data = self.cleaned_data
        if data.get("actor"):
            queryset = queryset.filter(actor_email__icontains=data["actor"].strip())
        if data.get("action"):
            queryset = queryset.filter(action=data["action"])
        if data.get("object_kind"):
            queryset = queryset.filter(object_kind=data["object_kind"].strip().lower())
        if data.get("object_id"):
            queryset = queryset.filter(object_id=data["object_id"].strip())
        if data.get("since"):
            queryset = queryset.filter(created__gte=data["since"])
        if data.get("until"):
            queryset = queryset.filter(created__lte=data["until"])
        return queryset
