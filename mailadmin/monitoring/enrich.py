"""Where an address is: admin-defined named networks first, then the offline GeoIP data.

The GeoIP data ships inside the `geoip2fast` PyPI package (MIT; data from
MaxMind GeoLite2 Country+ASN, CC BY-SA 4.0) — nothing is downloaded at run
time. It gives a country and an AS name (no AS number, no coordinates);
named networks can add city, coordinates, AS number and a kind.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass

from mailadmin.monitoring.netmatch import MEMO_MAX, NetworkTable

log = logging.getLogger(__name__)

GEOIP_DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"
NAMED_RELOAD_SECONDS = 30.0
NAMED_VERSION_KEY = "monitoring:networks:version"


@dataclass(frozen=True)
class Place:
    country: str = ""
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None
    asn: int | None = None
    as_name: str = ""
    network_name: str = ""
    network_kind: str = ""

    @property
    def asn_key(self) -> str:
        """Key for grouping by AS: the number when known, else the AS name."""
        if self.asn:
            return f"AS{self.asn}"
        return self.as_name


UNKNOWN = Place()

_geoip = None
_geoip_lock = threading.Lock()


def _geoip_reader():
    global _geoip
    if _geoip is None:
        with _geoip_lock:
            if _geoip is None:
                try:
                    import geoip2fast
                    from geoip2fast import GeoIP2Fast

                    path = os.path.join(os.path.dirname(geoip2fast.__file__), GEOIP_DATA_FILE)
                    _geoip = GeoIP2Fast(geoip2fast_data_file=path, verbose=False)
                    # Out of the cyclic collector's sight from now on (gc.freeze: everything
                    # alive now, the GeoIP tables above all). Its lists made every full
                    # collection walk millions of entries (~240 ms, against ~90 ms without
                    # them); an ingest batch's allocations set one off every few batches:
                    # ~12 % of ingest's CPU. Reference counting still frees these objects.
                    gc.freeze()
                except Exception:
                    log.exception("GeoIP data could not be loaded; continuing with named networks only")
                    _geoip = False
    return _geoip or None


def geoip_data_info() -> dict:
    """What the dashboard shows about the GeoIP data (source and date)."""
    reader = _geoip_reader()
    if reader is None:
        return {"source": "unavailable", "date": ""}
    source = reader.get_database_info().get("source_info", "")
    date = source.rsplit("-", 1)[-1] if source else ""
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return {"source": source, "date": date, "package": "geoip2fast"}


def geoip_lookup(ip: str) -> Place:
    reader = _geoip_reader()
    if reader is None:
        return UNKNOWN
    try:
        if not ipaddress.ip_address(ip).is_global:
            # Private, CGNAT and documentation space: GeoIP calls it all "IANA.ORG", one
            # pseudo-AS that would make every such address look like every other.
            return UNKNOWN
    except ValueError:
        return UNKNOWN
    try:
        result = reader.lookup(ip)
    except Exception:
        return UNKNOWN
    country = result.country_code if len(result.country_code or "") == 2 and result.country_code != "--" else ""
    return Place(country=country, as_name=(result.asn_name or "")[:200])


class _NamedNetworks:
    def __init__(self):
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._polled_at = 0.0
        self._version = None
        # network → Place of the named networks loaded (and address → its Place, memoised).
        self.table = NetworkTable()
        # address text → its Place (named network and GeoIP) for the loaded set: ingest asks
        # for the same addresses all day, and a GeoIP lookup is pure Python.
        self.places: dict = {}

    def invalidate(self):
        self._loaded_at = 0.0
        self._polled_at = 0.0
        self._version = object()

    def ensure_fresh(self):
        now = time.monotonic()
        if now - self._polled_at < 1.0:
            return
        self._polled_at = now
        from django.core.cache import cache

        try:
            version = cache.get(NAMED_VERSION_KEY)
        except Exception:
            version = None
        if version == self._version and now - self._loaded_at < NAMED_RELOAD_SECONDS:
            return
        with self._lock:
            self._load()
            self._version = version
            self._loaded_at = now

    def _load(self):
        from mailadmin.monitoring.models import NamedNetwork

        by_net = {}
        for n in NamedNetwork.objects.all():
            try:
                net = ipaddress.ip_network(n.network, strict=False)
            except ValueError:
                continue
            by_net[net] = Place(
                country=n.country,
                city=n.city,
                latitude=n.latitude,
                longitude=n.longitude,
                asn=n.asn,
                as_name=n.as_name,
                network_name=n.name,
                network_kind=n.kind,
            )
        self.table = NetworkTable(by_net)  # most specific network first
        self.places = {}

    def lookup(self, addr) -> Place | None:
        return self.table.lookup(addr)


_named = _NamedNetworks()


def networks_changed():
    """Call after named networks change (import, dashboard edit)."""
    from django.core.cache import cache

    try:
        cache.set(NAMED_VERSION_KEY, time.time_ns(), timeout=None)
    except Exception:
        log.warning("could not bump the named-network version", exc_info=True)
    _named.invalidate()


def lookup(ip: str) -> Place:
    """Named network (most specific) first; fill its gaps from GeoIP."""
    _named.ensure_fresh()
    places = _named.places
    place = places.get(ip)
    if place is None:
        place = _lookup(ip)
        if len(places) >= MEMO_MAX:
            places.clear()
        places[ip] = place
    return place


def _lookup(ip: str) -> Place:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return UNKNOWN
    named = _named.lookup(addr)
    if named is None:
        return geoip_lookup(str(addr))
    if named.country and named.as_name:
        return named
    geo = geoip_lookup(str(addr))
    return Place(
        country=named.country or geo.country,
        city=named.city,
        latitude=named.latitude,
        longitude=named.longitude,
        asn=named.asn,
        as_name=named.as_name or geo.as_name,
        network_name=named.network_name,
        network_kind=named.network_kind,
    )
