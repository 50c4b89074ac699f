"""Event search: filters, keyset pagination on (ts, id), streamed CSV export."""

from __future__ import annotations

import datetime as dt
import ipaddress

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import Lookup, Q
from django.db.models.fields import GenericIPAddressField
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode

from mailadmin.monitoring import charts
from mailadmin.monitoring.blocks import prefix_of
from mailadmin.monitoring.models import AuthEvent, Result, domain_of
from mailadmin.monitoring.views.common import stream_csv

PAGE_SIZE = 50
CSV_COLUMNS = [
    ("ts", "Time (UTC)"),
    ("client_ip", "IP"),
    ("username", "Username"),
    ("result", "Result"),
    ("mechanism", "Mechanism"),
    ("listener", "Listener"),
    ("tls", "TLS"),
    ("country", "Country"),
    ("asn", "ASN"),
    ("as_name", "AS name"),
    ("network_name", "Network"),
    ("helo", "EHLO"),
    ("node", "Node"),
    ("session_id", "Session"),
    ("attempt", "Attempt"),
    ("latency_ms", "Latency (ms)"),
]


@GenericIPAddressField.register_lookup
class NetContainedOrEqual(Lookup):
    """client_ip__net_within="192.0.2.0/24" (PostgreSQL's inet <<= operator)."""

    lookup_name = "net_within"
    prepare_rhs = False  # a CIDR is not an IP address: skip the field's validation

    def as_postgresql(self, compiler, conn):
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} <<= {rhs}::inet", [*lhs_params, *rhs_params]

    def as_sql(self, compiler, conn):
        raise NotImplementedError("CIDR search needs PostgreSQL")

    def get_db_prep_lookup(self, value, conn):
        return ("%s", [value])


RESULT_CHOICES = [("", "Any result"), ("failed", "Any failure (not success)"), *Result.choices]
TLS_CHOICES = [("", "Any"), ("tls", "With TLS"), ("none", "Without TLS")]


class EventFilterForm(forms.Form):
    """Every filter is optional; invalid values are reported, never a server error."""

    start = forms.CharField(required=False, label="From (UTC)")
    end = forms.CharField(required=False, label="To (UTC)")
    username = forms.CharField(required=False, max_length=320, help_text="Exact, or a prefix ending in *")
    ip = forms.CharField(required=False, max_length=50, label="IP or CIDR")
    result = forms.ChoiceField(required=False, choices=RESULT_CHOICES)
    mechanism = forms.CharField(required=False, max_length=20)
    country = forms.CharField(required=False, max_length=2)
    asn = forms.CharField(required=False, max_length=12, label="ASN")
    listener = forms.IntegerField(required=False, min_value=0, max_value=65535)
    tls = forms.ChoiceField(required=False, choices=TLS_CHOICES, label="TLS")

    def clean_ip(self):
        text = self.cleaned_data["ip"].strip()
        if not text:
            return None
        try:
            if "/" in text:
                return ipaddress.ip_network(text, strict=False)
            return ipaddress.ip_address(text)
        except ValueError:
            raise forms.ValidationError(f"“{text}” is not an IP address or CIDR network.") from None

    def clean_asn(self):
        text = self.cleaned_data["asn"].strip().upper().removeprefix("AS")
        if not text:
            return None
        if not text.isdigit() or int(text) > 2**32 - 1:
            raise forms.ValidationError("An ASN is a number, e.g. 64500 or AS64500.")
        return int(text)

    def clean_country(self):
        text = self.cleaned_data["country"].strip().upper()
        if text and not (len(text) == 2 and text.isalpha()):
            raise forms.ValidationError("A country is a two-letter code, e.g. DE.")
        return text

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        try:
            data["start_dt"] = charts.parse_datetime(start) if start else None
            data["end_dt"] = charts.parse_datetime(end) if end else None
        except charts.RangeError as exc:
            raise forms.ValidationError(str(exc)) from None
        if data["start_dt"] and data["end_dt"] and data["end_dt"] <= data["start_dt"]:
            raise forms.ValidationError("The end of the range must be after its start.")
        return data


def filter_events(queryset, data):
    """Apply the cleaned filters of an EventFilterForm. Raises ValueError for unsupported CIDR."""
    if data.get("start_dt"):
        queryset = queryset.filter(ts__gte=data["start_dt"])
    if data.get("end_dt"):
        queryset = queryset.filter(ts__lt=data["end_dt"])
    username = (data.get("username") or "").strip().lower()
    if username.endswith("*"):
        queryset = queryset.filter(username__startswith=username[:-1])
    elif username:
        # Ingest sets domain_name from the username: saying so lets a domain admin's search for
        # another domain's user end in the index at once instead of walking their own domain.
        queryset = queryset.filter(username=username, domain_name=domain_of(username))
    ip = data.get("ip")
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        queryset = queryset.filter(client_ip=str(ip))
    elif ip is not None:
        if ip.num_addresses == 1:
            queryset = queryset.filter(client_ip=str(ip.network_address))
        elif str(ip) == prefix_of(str(ip.network_address)):
            queryset = queryset.filter(prefix=str(ip))  # indexed, and works on SQLite too
        elif connection.vendor == "postgresql":
            queryset = queryset.filter(client_ip__net_within=str(ip))
        else:
            raise ValueError("Searching by an arbitrary CIDR needs PostgreSQL; use one address or its /24 or /64.")
    result = data.get("result")
    if result == "failed":
        queryset = queryset.exclude(result=Result.SUCCESS)
    elif result:
        queryset = queryset.filter(result=result)
    if data.get("mechanism"):
        queryset = queryset.filter(mechanism=data["mechanism"].strip().upper())
    if data.get("country"):
        queryset = queryset.filter(country=data["country"])
    if data.get("asn") is not None:
        queryset = queryset.filter(asn=data["asn"])
    if data.get("listener") is not None:
        queryset = queryset.filter(listener=data["listener"])
    if data.get("tls") == "tls":
        queryset = queryset.exclude(tls="")
    elif data.get("tls") == "none":
        queryset = queryset.filter(tls="")
    return queryset


def encode_cursor(event) -> str:
    return f"{event.ts.astimezone(dt.UTC).isoformat()}_{event.pk}"


def decode_cursor(text: str):
    """(ts, id) from a cursor; ValueError when it was tampered with."""
    ts_text, _, pk_text = (text or "").rpartition("_")
    ts = dt.datetime.fromisoformat(ts_text)
    if ts.tzinfo is None:
        raise ValueError("cursor without time zone")
    return ts, int(pk_text)


def after_cursor(queryset, ts, pk):
    """Rows strictly older than (ts, pk) in the (-ts, -id) order; written so an index on ts serves it."""
    return queryset.filter(ts__lte=ts).filter(Q(ts__lt=ts) | Q(pk__lt=pk))


def page_of(user, queryset, size: int):
    """The first `size` rows of an ordered search.

    A domain admin's: the ids first, from the covering (domain_name, ts, id) index alone,
    then those rows. A rare combination of filters walks many index entries of the domain,
    but not the heap pages of its rows (one page per row, scattered among the other
    domains' rows) — the filters are checked in the index.
    """
    if charts.sees_everything(user) or connection.vendor != "postgresql":
        return queryset[:size]
    ids = queryset.values("pk")[:size]
    return AuthEvent.objects.filter(pk__in=ids).order_by("-ts", "-id")


def search(user, params):
    """(form, queryset or None, error message) for the request's filters."""
    form = EventFilterForm(params or None)
    base = AuthEvent.objects.visible_to(user)
    if not params:
        form = EventFilterForm(initial={})
        default_start = timezone.now() - dt.timedelta(hours=24)
        return form, base.filter(ts__gte=default_start), None
    if not form.is_valid():
        return form, None, "Please correct the filters below."
    try:
        return form, filter_events(base, form.cleaned_data), None
    except ValueError as exc:
        return form, None, str(exc)


@login_required
def event_search(request):
    params = request.GET.copy()
    cursor = params.pop("after", [""])[0]
    params.pop("page", None)  # there are no page numbers: huge ones are simply ignored
    form, queryset, error = search(request.user, params)
    events, next_cursor = [], None
    if queryset is not None:
        queryset = queryset.order_by("-ts", "-id")
        if cursor:
            try:
                queryset = after_cursor(queryset, *decode_cursor(cursor))
            except ValueError:
                error = "That page link is not valid any more; showing the first page."
        events = list(page_of(request.user, queryset, PAGE_SIZE + 1))
        if len(events) > PAGE_SIZE:
            events = events[:PAGE_SIZE]
            next_cursor = encode_cursor(events[-1])
    filters = urlencode([(k, v) for k, v in params.items() if v])
    context = {
        "form": form,
        "events": events,
        "error": error,
        "filters": filters,
        "next_query": urlencode([*[(k, v) for k, v in params.items() if v], ("after", next_cursor)])
        if next_cursor
        else "",
        "is_first_page": not cursor,
    }
    return render(request, "monitoring/events.html", context)


@login_required
def event_export(request):
    """The whole filtered set as CSV, streamed from a server-side cursor."""
    form, queryset, error = search(request.user, request.GET.copy())
    if queryset is None:
        from django.http import HttpResponseBadRequest

        return HttpResponseBadRequest(f"Cannot export: {error}\n", content_type="text/plain; charset=utf-8")
    fields = [name for name, _ in CSV_COLUMNS]
    rows = queryset.order_by("-ts", "-id").values_list(*fields).iterator(chunk_size=2000)
    stamp = timezone.now().strftime("%Y%m%dT%H%M")
    return stream_csv(f"auth-events-{stamp}.csv", [label for _, label in CSV_COLUMNS], rows)
