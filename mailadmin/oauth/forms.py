from django import forms

from mailadmin.accounts.models import Domain
from mailadmin.oauth.models import Application


class ApplicationForm(forms.ModelForm):
    class Meta:
        model = Application
        fields = ["name", "client_type", "redirect_uris", "domain"]
        help_texts = {
            "redirect_uris": "One per line, exact match. Native apps may use http://127.0.0.1:PORT/ (RFC 8252).",
            "client_type": "Public clients (desktop, mobile) cannot keep a secret and must use PKCE.",
        }

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].required = True
        self.fields["redirect_uris"].required = True
        self.fields["domain"].queryset = Domain.objects.writable_by(user)
        # Only superadmins may create applications every domain can use.
        self.fields["domain"].required = not user.is_superadmin
        self.fields["domain"].empty_label = "Every domain" if user.is_superadmin else None

    def clean_redirect_uris(self):
        uris = self.cleaned_data["redirect_uris"].split()
        if not uris:
            raise forms.ValidationError("Give at least one redirect URI.")
        for uri in uris:
            if not uri.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
                raise forms.ValidationError(f"{uri}: use https://, or http:// on the loopback address only.")
        return "\n".join(uris)
