"""Distances for impossible travel.

Named networks carry coordinates (city precision). The bundled GeoIP data has
only countries, so for those we use a country's rough centre and a radius
that covers most of it: the distance used is a LOWER bound (centre distance
minus both radii), so a country-level guess can only understate a speed.
"""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0

# country: (latitude, longitude, radius_km) — rough centre and extent.
COUNTRY_CENTRES = {
    "AR": (-34.0, -64.0, 1400),
    "AT": (47.5, 14.5, 250),
    "AU": (-25.0, 134.0, 2000),
    "BE": (50.6, 4.6, 120),
    "BR": (-10.0, -52.0, 2000),
    "CA": (56.0, -96.0, 2500),
    "CH": (46.8, 8.2, 150),
    "CL": (-33.5, -70.7, 1500),
    "CN": (35.0, 104.0, 2000),
    "CZ": (49.8, 15.5, 250),
    "DE": (51.0, 10.3, 400),
    "DK": (56.0, 10.0, 200),
    "EG": (26.8, 30.8, 600),
    "ES": (40.3, -3.7, 500),
    "FI": (63.0, 26.0, 550),
    "FR": (46.6, 2.4, 550),
    "GB": (53.5, -2.0, 450),
    "GR": (39.0, 22.5, 350),
    "HK": (22.3, 114.2, 30),
    "HU": (47.2, 19.4, 250),
    "ID": (-2.5, 118.0, 2000),
    "IE": (53.2, -8.0, 250),
    "IL": (31.5, 34.9, 200),
    "IN": (22.0, 79.0, 1600),
    "IR": (32.0, 53.0, 1000),
    "IT": (42.8, 12.5, 600),
    "JP": (36.5, 138.0, 1100),
    "KE": (0.2, 37.9, 500),
    "KR": (36.5, 127.9, 300),
    "MX": (23.6, -102.5, 1400),
    "MY": (3.8, 109.0, 900),
    "NG": (9.1, 8.7, 600),
    "NL": (52.2, 5.3, 150),
    "NO": (62.0, 10.0, 900),
    "NZ": (-41.0, 174.0, 800),
    "PH": (12.9, 121.8, 900),
    "PK": (30.4, 69.3, 800),
    "PL": (52.0, 19.4, 350),
    "PT": (39.6, -8.0, 300),
    "RO": (45.9, 25.0, 350),
    "RU": (61.5, 98.0, 4000),
    "SA": (24.0, 45.0, 1100),
    "SE": (62.0, 15.0, 800),
    "SG": (1.35, 103.8, 30),
    "TH": (15.9, 100.9, 800),
    "TR": (39.0, 35.2, 800),
    "TW": (23.7, 121.0, 200),
    "UA": (49.0, 31.4, 600),
    "US": (39.8, -98.6, 2600),
    "VN": (16.0, 107.8, 900),
    "ZA": (-29.0, 24.0, 900),
}


def haversine_km(lat1, lon1, lat2, lon2) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = math.radians(lat2 - lat1)
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def locate(latitude, longitude, country) -> tuple[float, float, float] | None:
    """(lat, lon, uncertainty_km) of an event, or None when unknown."""
    if latitude is not None and longitude is not None:
        return (latitude, longitude, 50.0)
    centre = COUNTRY_CENTRES.get(country or "")
    return centre


def min_distance_km(a, b) -> float:
    """Lower bound of the distance between two located places."""
    return max(0.0, haversine_km(a[0], a[1], b[0], b[1]) - a[2] - b[2])
