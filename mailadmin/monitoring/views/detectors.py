"""Detector settings: enable/disable each rule, edit thresholds and windows, preview before saving.

The rules and their defaults come from mailadmin.monitoring.detectors.DEFAULTS
(the monitoring app owns them); overrides are stored in DetectorSetting.params.
The preview is charts.preview_rule: an estimate from the per-minute rollups.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailadmin.monitoring import charts
from mailadmin.monitoring.models import DetectorSetting
from mailadmin.monitoring.views.common import require_superadmin
from mailadmin.staff import audit

# Parameters that are labels, not numbers to tune.
NOT_EDITABLE = {"severity"}
MAX_PARAM = 1_000_000


def defaults() -> dict:
    from mailadmin.monitoring import detectors

    return getattr(detectors, "DEFAULTS", {})


def titles() -> dict:
    from mailadmin.monitoring import detectors

    return getattr(detectors, "TITLES", None) or getattr(detectors, "RULE_TITLES", None) or {}


def rules() -> dict:
    """{rule: {"defaults": {...}, "params": effective, "enabled": bool, "setting": DetectorSetting|None}}."""
    stored = {s.rule: s for s in DetectorSetting.objects.all()}
    out = {}
    for rule in sorted(set(defaults()) | set(stored)):
        base = dict(defaults().get(rule, {}))
        setting = stored.get(rule)
        params = {**base, **((setting.params or {}) if setting else {})}
        out[rule] = {
            "defaults": base,
            "params": params,
            "enabled": setting.enabled if setting else True,
            "setting": setting,
            "title": titles().get(rule, rule.replace("_", " ")),
            "previewable": rule in charts.PREVIEWABLE,
            "why_no_preview": charts.NOT_PREVIEWABLE.get(rule, ""),
        }
    return out


def _get_rule_for_user(request, rule):
    if not request.user.sees_all_domains:
        raise PermissionDenied("Detector settings are server-wide")
    known = rules()
    if rule not in known:
        raise Http404("No such rule")
    return known[rule]


def parse_params(info: dict, post) -> tuple[dict, list[str]]:
    """Numbers from the form for the rule's editable parameters; errors for nonsense."""
    params, errors = {}, []
    for name, default in info["params"].items():
        if name in NOT_EDITABLE or not isinstance(default, int | float) or isinstance(default, bool):
            continue
        text = (post.get(name) or "").strip()
        if text == "":
            params[name] = default
            continue
        try:
            value = float(text) if isinstance(default, float) else int(text)
        except ValueError:
            errors.append(f"{name}: “{text[:20]}” is not a number.")
            continue
        if value <= 0 or value > MAX_PARAM:
            errors.append(f"{name}: must be above 0 and at most {MAX_PARAM}.")
            continue
        params[name] = value
    return params, errors


@login_required
def detector_list(request):
    if not request.user.sees_all_domains:
        raise PermissionDenied("Detector settings are server-wide")
    return render(request, "monitoring/detectors.html", {"rules": rules(), "can_edit": request.user.is_superadmin})


@login_required
def detector_edit(request, rule):
    info = _get_rule_for_user(request, rule)
    if request.method == "POST":
        require_superadmin(request)
        params, errors = parse_params(info, request.POST)
        if errors:
            for e in errors:
                messages.error(request, e)
        else:
            setting = info["setting"] or DetectorSetting(rule=rule)
            before = audit.snapshot(setting) if setting.pk else None
            setting.enabled = request.POST.get("enabled") == "on"
            # Store only what differs from the defaults, so later default changes still apply.
            setting.params = {k: v for k, v in params.items() if info["defaults"].get(k) != v}
            setting.save()
            audit.record(
                request, "update" if before else "create", setting, changes=audit.diff(before, audit.snapshot(setting))
            )
            _notify_detectors()
            messages.success(request, f"{info['title']} saved.")
            return redirect("monitoring:detectors")
    editable = {
        k: v
        for k, v in info["params"].items()
        if k not in NOT_EDITABLE and isinstance(v, int | float) and not isinstance(v, bool)
    }
    return render(
        request,
        "monitoring/detector_edit.html",
        {"rule": rule, "info": info, "editable": editable, "can_edit": request.user.is_superadmin},
    )


def _notify_detectors():
    from mailadmin.monitoring import detectors

    changed = getattr(detectors, "settings_changed", None)
    if changed is not None:
        changed()


@login_required
@require_POST
def detector_preview(request, rule):
    """htmx fragment: how often the rule with the posted params would have fired in 7 days."""
    info = _get_rule_for_user(request, rule)
    params, errors = parse_params(info, request.POST)
    fired = None if errors else charts.preview_rule(rule, {**info["params"], **params})
    return render(
        request,
        "monitoring/_detector_preview.html",
        {"errors": errors, "fired": fired, "previewable": info["previewable"], "why": info["why_no_preview"]},
    )
