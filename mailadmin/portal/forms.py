from django import forms


class SignInForm(forms.Form):
    address = forms.CharField(label="Mail address", max_length=320)
    password = forms.CharField(label="Password", strip=False, max_length=1024, widget=forms.PasswordInput)


class TOTPForm(forms.Form):
    code = forms.RegexField(
        label="Code from your authenticator app",
        regex=r"^\s*\d{6}\s*$",
        max_length=12,
        error_messages={"invalid": "Enter the 6-digit code."},
    )

    def clean_code(self):
        return self.cleaned_data["code"].strip()


class PasswordChangeForm(forms.Form):
    current = forms.CharField(label="Current password", strip=False, max_length=1024, widget=forms.PasswordInput)
    new = forms.CharField(label="New password", strip=False, max_length=1024, widget=forms.PasswordInput)
    confirm = forms.CharField(label="New password again", strip=False, max_length=1024, widget=forms.PasswordInput)

    def clean(self):
        data = super().clean()
        if data.get("new") and data.get("new") != data.get("confirm"):
            self.add_error("confirm", "The two new passwords differ.")
        return data


class AppPasswordForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, help_text='Which client will use it, e.g. "Phone".')


class NoticeForm(forms.Form):
    notify_new_signin = forms.BooleanField(label="Email me about sign-ins from new places", required=False)
