"""Development-only credential encryption key, generated once into var/ (like SECRET_KEY).
Production sets CREDENTIAL_ENCRYPTION_KEYS (README "Credential encryption keys")."""

import os
from pathlib import Path


def development_key(var_dir: Path) -> str:
    from cryptography.fernet import Fernet

    path = var_dir / "credential_key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(Fernet.generate_key().decode("ascii"))
    return path.read_text().strip()
