"""Forms for mailboxes, aliases, app passwords and the password policy.
Password rules come from policy.check_password (every failed rule shown)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from mailadmin.accounts import credentials
from mailadmin.accounts.mailboxes import clean_local_part
from mailadmin.accounts.models import Domain, Mailbox, PasswordPolicy
from mailadmin.accounts.policy import check_password


class _Bootstrap:
    def _style(self):
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, forms.CheckboxInput):
                widget.attrs.setdefault("class", "form-check-input")
            elif isinstance(widget, forms.Select | forms.RadioSelect):
                if isinstance(widget, forms.Select):
                    widget.attrs.setdefault("class", "form-select")
            else:
                widget.attrs.setdefault("class", "form-control")


class PasswordChoiceMixin(forms.Form):
    password_mode = forms.ChoiceField(
        label="Password",
        choices=[("generate", "Generate a strong password (shown once)"), ("set", "Set this password")],
        initial="generate",
        widget=forms.RadioSelect,
    )
    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    password_confirm = forms.CharField(
        label="Repeat password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_password_fields(self, *, mailbox=None, domain=None, local_part=""):
        data = self.cleaned_data
        if data.get("password_mode") != "set":
            data["password"] = None
            return
        password, confirm = data.get("password") or "", data.get("password_confirm") or ""
        if not password:
            self.add_error("password", "Enter the password, or choose to generate one.")
            return
        if password != confirm:
            self.add_error("password_confirm", "The two passwords differ.")
            return
        problems = check_password(password, mailbox=mailbox, domain=domain, local_part=local_part)
        for problem in problems:
            self.add_error("password", problem)


class MailboxCreateForm(_Bootstrap, PasswordChoiceMixin, forms.Form):
    domain = forms.ModelChoiceField(queryset=Domain.objects.none())
    local_part = forms.CharField(label="Address (before the @)", max_length=64)
    display_name = forms.CharField(max_length=150, required=False)
    send_rate_per_hour = forms.IntegerField(
        min_value=1, required=False, help_text="Messages per hour; empty uses the domain's default."
    )

    field_order = ["domain", "local_part", "display_name", "send_rate_per_hour", "password_mode"]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["domain"].queryset = Domain.objects.writable_by(user).filter(is_active=True)
        self._style()

    def clean_local_part(self):
        return clean_local_part(self.cleaned_data["local_part"])

    def clean(self):
        data = super().clean()
        self.clean_password_fields(domain=data.get("domain"), local_part=data.get("local_part") or "")
        return data


class MailboxEditForm(_Bootstrap, forms.ModelForm):
    class Meta:
        model = Mailbox
        fields = ["display_name", "send_rate_per_hour"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()


class SuspendForm(_Bootstrap, forms.Form):
    reason = forms.CharField(max_length=255, help_text="Why (visible to other admins and in the audit log).")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()


class PasswordResetForm(_Bootstrap, PasswordChoiceMixin, forms.Form):
    def __init__(self, *args, mailbox, **kwargs):
        self.mailbox = mailbox
        super().__init__(*args, **kwargs)
        self._style()

    def clean(self):
        data = super().clean()
        self.clean_password_fields(mailbox=self.mailbox)
        return data


class AliasForm(_Bootstrap, forms.Form):
    address = forms.CharField(
        max_length=320, help_text="A name in this mailbox's domain, or a full address in another domain you manage."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()


class AppPasswordForm(_Bootstrap, forms.Form):
    name = forms.CharField(max_length=100, help_text='Which client uses it, e.g. "Thunderbird at home".')
    expires_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Optional.")
    allowed_networks = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional CIDR list (192.0.2.0/24, 2001:db8::/32); empty allows any network.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()

    def clean_expires_on(self):
        value = self.cleaned_data.get("expires_on")
        if value and value <= timezone.localdate():
            raise ValidationError("The expiry date must be in the future.")
        return value

    def clean_allowed_networks(self):
        return credentials.parse_networks(self.cleaned_data.get("allowed_networks") or "")


class PasswordPolicyForm(_Bootstrap, forms.ModelForm):
    class Meta:
        model = PasswordPolicy
        fields = [
            "min_length",
            "max_length",
            "require_lowercase",
            "require_uppercase",
            "require_digit",
            "require_symbol",
            "min_zxcvbn_score",
            "reject_common",
            "reject_address_parts",
            "history_count",
            "max_age_days",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()

    def clean(self):
        data = super().clean()
        if data.get("min_length") and data.get("max_length") and data["max_length"] < data["min_length"]:
            self.add_error("max_length", "The maximum length must be at least the minimum length.")
        return data


class CsvUploadForm(_Bootstrap, forms.Form):
    file = forms.FileField(label="CSV file", help_text="Columns: address, display_name, password, send_rate_per_hour.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style()
