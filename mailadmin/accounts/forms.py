"""Forms of the accounts app. Domain names go through the one shared validator."""

from django import forms

from mailadmin.accounts.models import Domain
from mailadmin.accounts.validators import normalize_domain_name, unicode_domain_name

# Limits bind domain admins, so only superadmins set them; CRAM-MD5 stores a
# password-equivalent secret, so only superadmins may switch it on.
SUPERADMIN_DOMAIN_FIELDS = [
    "description",
    "max_mailboxes",
    "default_send_rate",
    "require_app_passwords",
    "cram_md5_enabled",
]
# What a domain admin may change on their own domains.
DOMAIN_ADMIN_DOMAIN_FIELDS = ["description", "require_app_passwords"]


class BootstrapMixin:
    """Bootstrap classes on every widget, so templates can render fields plainly."""

    def _style_fields(self):
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, forms.CheckboxInput):
                widget.attrs.setdefault("class", "form-check-input")
            elif isinstance(widget, forms.Select | forms.SelectMultiple):
                widget.attrs.setdefault("class", "form-select")
            else:
                widget.attrs.setdefault("class", "form-control")


class DomainCreateForm(BootstrapMixin, forms.ModelForm):
    class Meta:
        model = Domain
        fields = ["name", *SUPERADMIN_DOMAIN_FIELDS]
        help_texts = {"name": "Internationalised names are fine (bücher.example); stored as xn--… (IDNA)."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._style_fields()

    def clean_name(self):
        name = normalize_domain_name(self.cleaned_data["name"])
        if Domain.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError(f"The domain {unicode_domain_name(name)} already exists.", code="duplicate")
        return name


class DomainEditForm(BootstrapMixin, forms.ModelForm):
    """Edits a domain's settings; the name is fixed (mailbox logins contain it)."""

    class Meta:
        model = Domain
        fields = SUPERADMIN_DOMAIN_FIELDS

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        if not user.is_superadmin:
            for name in list(self.fields):
                if name not in DOMAIN_ADMIN_DOMAIN_FIELDS:
                    del self.fields[name]
        self._style_fields()


class DomainDeleteForm(forms.Form):
    confirm_name = forms.CharField(
        label="Type the domain name to confirm",
        widget=forms.TextInput(attrs={"class": "form-control", "autocomplete": "off"}),
    )

    def __init__(self, *args, domain, **kwargs):
        super().__init__(*args, **kwargs)
        self.domain = domain

    def clean_confirm_name(self):
        typed = self.cleaned_data["confirm_name"].strip().rstrip(".").lower()
        if typed not in (self.domain.name.lower(), self.domain.unicode_name.lower()):
            raise forms.ValidationError("The name does not match; nothing was deleted.")
        return typed
