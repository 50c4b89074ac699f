"""README documents every environment variable settings.py reads; units exist for web, worker, one beat."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_environment_variable_is_documented():
    settings = (ROOT / "mailadmin" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int|float|list|choice)\("([A-Z0-9_]+)"', settings)) | {"SECRET_KEY"}
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"document these in README.md: {missing}"


def test_readme_order_and_systemd_units():
    readme = (ROOT / "README.md").read_text()
    assert (
        readme.index("## The two commands")
        < readme.index("## Configuration")
        < readme.index("## Production deployment")
    )
    units = {p.name for p in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert units == {
        "mailadmin-web.service",
        "mailadmin-smtpd.service",
        "mailadmin-worker.service",
        "mailadmin-worker@.service",
        "mailadmin-beat.service",
        "mailadmin-backup.service",
        "mailadmin-partitions.service",
    }
    # Exactly one beat: no other unit starts a scheduler.
    beats = [p.name for p in (ROOT / "deploy" / "systemd").glob("*.service") if " beat" in p.read_text()]
    assert beats == ["mailadmin-beat.service"]
