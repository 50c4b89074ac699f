"""Helpers for the data-driven security sweeps: every URL the resolver knows, filled
with identifiers of objects that belong to domain A; a world with one object of every
model kind; a fingerprint of the database to prove a sweep changed nothing.

Nothing here knows the other apps' URLs or models: new ones are swept automatically.
"""

import datetime
import hashlib
import itertools
import re
import uuid
from dataclasses import dataclass, field

from django.apps import apps
from django.db import IntegrityError, models, transaction
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from mailadmin.accounts.models import Domain

# Text put into every generated object of domain A: a page that shows it leaks A's data.
MARKER_A = "leak-marker-a"
DOMAIN_A_NAME = "a.example"
# Apps whose models we build and fingerprint (ours plus the OAuth provider's).
OWN_APP_PREFIXES = ("mailadmin.", "oauth2_provider")


@dataclass
class Route:
    path_template: str  # "domains/<int:pk>/edit/"
    name: str | None  # "accounts:domain_edit"
    params: dict[str, str]  # {"pk": "int"}
    regex_parts: bool = False
    default_kwargs: dict = field(default_factory=dict)

    def __str__(self):
        return self.name or self.path_template


def all_routes() -> list[Route]:
    routes = []

    def walk(patterns, prefix_parts, namespace, default_kwargs):
        for entry in patterns:
            parts = [*prefix_parts, entry.pattern]
            if isinstance(entry, URLResolver):
                ns = namespace
                if entry.namespace:
                    ns = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
                walk(entry.url_patterns, parts, ns, {**default_kwargs, **entry.default_kwargs})
            elif isinstance(entry, URLPattern):
                name = entry.name and (f"{namespace}:{entry.name}" if namespace else entry.name)
                params, template, regex = {}, "", False
                for part in parts:
                    if isinstance(part, RoutePattern):
                        template += str(part)
                        for param in re.findall(r"<(?:(\w+):)?(\w+)>", str(part)):
                            params[param[1]] = param[0] or "str"
                    else:
                        regex = True
                        template += part.regex.pattern
                        params.update({g: "str" for g in part.regex.groupindex})
                routes.append(Route(template, name, params, regex, {**default_kwargs, **entry.default_args}))

    walk(get_resolver().url_patterns, [], "", {})
    return routes


def fill(route: Route, values: dict[str, object]) -> str | None:
    """The concrete path for these parameter values, or None if they do not fit."""
    if route.regex_parts:
        if not route.name:
            return None
        try:
            return reverse(route.name, kwargs={k: values[k] for k in route.params})
        except (NoReverseMatch, KeyError):
            return None
    path = route.path_template
    for name, converter in route.params.items():
        value = values[name]
        if converter == "int" and not isinstance(value, int):
            return None
        if converter == "uuid" and not isinstance(value, uuid.UUID):
            return None
        path = re.sub(rf"<(?:\w+:)?{name}>", lambda _m, v=str(value): v, path, count=1)
    return "/" + path.lstrip("^").replace("\\", "")


def candidate_paths(route: Route, candidates: dict[str, list]) -> list[str]:
    """Every way of filling the route's parameters from the candidate values by type."""
    if not route.params:
        path = fill(route, {})
        return [path] if path else []
    pools = [candidates.get(conv, candidates["str"]) for conv in route.params.values()]
    paths = []
    for combo in itertools.islice(itertools.product(*pools), 60):
        path = fill(route, dict(zip(route.params, combo, strict=True)))
        if path and path not in paths:
            paths.append(path)
    return paths


# --- a world with one object of each kind -------------------------------------------


def own_models():
    return [
        m
        for m in apps.get_models()
        if m.__module__.startswith(OWN_APP_PREFIXES) and not m._meta.abstract and not m._meta.proxy
    ]


def path_to_domain(model, depth=3, seen=()):
    """A lookup like "mailbox__domain" from model to Domain (None if there is none)."""
    if model is Domain:
        return ""
    if depth == 0:
        return None
    for f in model._meta.get_fields():
        if f.is_relation and f.many_to_one and f.related_model and f.related_model not in seen:
            if f.related_model is Domain:
                return f.name
            rest = path_to_domain(f.related_model, depth - 1, (*seen, model))
            if rest:
                return f"{f.name}__{rest}"
    return None


def objects_of_domain(model, domain):
    lookup = path_to_domain(model)
    if lookup is None:
        return model.objects.none()
    if lookup == "":
        return model.objects.filter(pk=domain.pk)
    return model.objects.filter(**{lookup: domain})


def _value_for(f, counter):
    n = next(counter)
    if f.choices:
        return f.choices[0][0]
    if isinstance(f, models.EmailField):
        return f"{MARKER_A}-{n}@{DOMAIN_A_NAME}"
    if isinstance(f, models.GenericIPAddressField):
        return f"192.0.2.{n % 250 + 1}"
    if isinstance(f, models.UUIDField):
        return uuid.uuid4()
    if isinstance(f, models.URLField):
        return f"https://{DOMAIN_A_NAME}/{MARKER_A}/{n}"
    if isinstance(f, models.CharField | models.TextField | models.SlugField):
        text = f"{MARKER_A}-{n}"
        return text[: f.max_length] if f.max_length else text
    if isinstance(f, models.BooleanField):
        return False
    if isinstance(f, models.DateTimeField):
        return timezone.now()
    if isinstance(f, models.DateField):
        return datetime.date.today()
    if isinstance(f, models.DurationField):
        return datetime.timedelta(hours=1)
    if isinstance(f, models.DecimalField | models.FloatField | models.IntegerField):
        return 1
    if isinstance(f, models.BinaryField):
        return b"\x00" * 32
    if isinstance(f, models.JSONField):
        return {}
    return None


def autofill(model, domain, counter, depth=0):
    """Create one instance of model tied to domain, filling what has no default.
    Returns it, or None when the model cannot be built generically."""
    if depth > 4:
        return None
    existing = objects_of_domain(model, domain).first()
    if existing is not None and model is not Domain:
        return existing
    values = {}
    for f in model._meta.concrete_fields:
        if f.primary_key and (f.has_default() or isinstance(f, models.AutoField)):
            continue
        if f.is_relation:
            target = f.related_model
            # A nullable link to the domain (or to something of the domain) is set anyway:
            # left empty, the object would be global (e.g. an OAuth app for every domain).
            if f.null and (target is not Domain and path_to_domain(target) is None):
                continue
            related = domain if target is Domain else autofill(target, domain, counter, depth + 1)
            if related is None and target.__module__.startswith(OWN_APP_PREFIXES):
                return None
            if related is None:
                related = target.objects.first()
            if related is None:
                return None
            values[f.name] = related
            continue
        if f.has_default() or f.null or getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            continue
        value = _value_for(f, counter)
        if value is None:
            return None
        values[f.name] = value
    try:
        with transaction.atomic():
            return model.objects.create(**values)
    except (IntegrityError, ValueError, TypeError, Exception):  # noqa: BLE001 - any model may refuse dummies
        return None


def build_world(domain_a):
    """At least one object of every own model kind reachable from domain A."""
    counter = itertools.count(1)
    built = {}
    for model in own_models():
        if path_to_domain(model) is None:
            continue
        obj = objects_of_domain(model, domain_a).first() or autofill(model, domain_a, counter)
        if obj is not None:
            built[model] = obj
    return built


def candidates_for_domain(domain_a):
    """Parameter values by converter type: ids, uuids and names of A's objects."""
    ints, uuids, strs = set(), set(), {domain_a.name, MARKER_A}
    for model in own_models():
        for obj in objects_of_domain(model, domain_a)[:3]:
            if isinstance(obj.pk, int):
                ints.add(obj.pk)
            for f in model._meta.concrete_fields:
                value = getattr(obj, f.attname, None)
                if isinstance(value, uuid.UUID):
                    uuids.add(value)
                elif isinstance(f, models.EmailField | models.SlugField) and value:
                    strs.add(str(value))
    ints.discard(None)
    # Identifiers of any kind can appear in str/path parameters (the Django admin's object_id);
    # app labels fill the admin's app_list pattern.
    str_values = sorted(strs) + [str(u) for u in sorted(uuids, key=str)] + [str(i) for i in sorted(ints)]
    str_values += sorted({m._meta.app_label for m in apps.get_models()})
    return {
        "int": sorted(ints) or [1],
        "uuid": sorted(uuids, key=str) or [uuid.uuid4()],
        "str": str_values,
        "slug": [s for s in str_values if re.fullmatch(r"[-a-zA-Z0-9_]+", s)] or ["x"],
        "path": str_values,
    }


# --- proof that nothing changed ------------------------------------------------------


def fingerprint(exclude=()):
    """A hash of every row of our models (minus append-only logs in exclude)."""
    result = {}
    for model in own_models():
        if model._meta.label in exclude:
            continue
        rows = model.objects.order_by("pk").values_list()
        digest = hashlib.sha256(repr(list(rows)).encode()).hexdigest()
        result[model._meta.label] = digest
    return result


def changed_tables(before, after):
    return sorted(label for label in before if before[label] != after.get(label))
