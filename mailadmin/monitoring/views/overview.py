"""Overview: failed vs successful logins over time, breakdowns and counters (polled fragment)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.utils.http import urlencode

from mailadmin.monitoring import charts
from mailadmin.monitoring.views.common import stream_csv

# The overview's breakdowns, in page order (the timeline is drawn above them).
BREAKDOWNS = ["top_ips", "top_users", "reasons", "mechanisms", "countries", "listeners"]


def _chart(name):
    try:
        return charts.CHARTS[name]
    except KeyError:
        raise Http404("No such chart") from None


@login_required
def overview(request):
    tr, message = charts.range_from_params(request.GET)
    context = {
        "tr": tr,
        "range_message": message,
        "presets": list(charts.PRESETS),
        "query": urlencode(tr.query_params()),
        "breakdowns": BREAKDOWNS,
        "start_value": request.GET.get("start", ""),
        "end_value": request.GET.get("end", ""),
    }
    return render(request, "monitoring/overview.html", context)


@login_required
def overview_fragment(request):
    """Counters, every chart's table and its data (json_script) — swapped in by htmx polling."""
    tr, _ = charts.range_from_params(request.GET)
    tables = [charts.CHARTS[name](request.user, tr) for name in ["timeline", *BREAKDOWNS]]
    context = {
        "tr": tr,
        "query": urlencode(tr.query_params()),
        "counters": charts.counters(request.user, tr),
        "timeline": tables[0],
        "tables": tables[1:],
        "chart_data": {t.name: t.as_json(tr) for t in tables},
        "can_block": request.user.is_superadmin,
    }
    return render(request, "monitoring/_overview_fragment.html", context)


@login_required
def chart_json(request, name):
    chart = _chart(name)
    tr, message = charts.range_from_params(request.GET)
    data = chart(request.user, tr).as_json(tr)
    if message:
        data["message"] = message
    return JsonResponse(data)


@login_required
def chart_csv(request, name):
    chart = _chart(name)
    tr, _ = charts.range_from_params(request.GET)
    table = chart(request.user, tr)
    stamp = tr.start.strftime("%Y%m%dT%H%M")
    return stream_csv(f"{name}-{stamp}.csv", table.columns, table.rows)
