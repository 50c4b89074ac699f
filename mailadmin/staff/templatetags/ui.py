"""Template helpers for Bootstrap markup of forms we do not build ourselves (allauth's)."""

from django import forms, template

register = template.Library()


@register.filter
def bootstrap_widget(bound_field):
    """Render a bound field's widget with the Bootstrap class that fits it."""
    widget = bound_field.field.widget
    if isinstance(widget, forms.CheckboxInput):
        css = "form-check-input"
    elif isinstance(widget, forms.Select):
        css = "form-select"
    else:
        css = "form-control"
    if bound_field.errors:
        css += " is-invalid"
    return bound_field.as_widget(attrs={"class": css})
