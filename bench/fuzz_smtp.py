"""Long fuzz of the live SMTP command and AUTH dialogue: the same grammar and checks as
tests/security/test_smtp_fuzz.py (which runs 60 dialogues in `make test`), with a
bigger budget. It starts its own smtpd on ephemeral loopback ports against a test
database, like the test suite.

    TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailadmin_bench \\
    .venv/bin/python bench/fuzz_smtp.py --examples 5000

Exit status 0 when every dialogue got well-formed replies and the server survived.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000, help="dialogues to play (CI plays 60)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mailadmin_bench"),
    )
    # The fuzz needs no broker: events go to a filesystem broker in a temporary directory.
    parser.add_argument("--broker-url", default="filesystem://")
    options = parser.parse_args()
    env = {
        **os.environ,
        "SMTP_FUZZ_EXAMPLES": str(options.examples),
        "DATABASE_URL": options.database_url,
        "CELERY_BROKER_URL": options.broker_url,
        "CACHE_URL": "locmem://",
        "VAR_DIR": tempfile.mkdtemp(prefix="fuzz-smtp-"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-secret-key-0123456789abcdef0123456789"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/security/test_smtp_fuzz.py"],
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - started
    print(f"{options.examples} dialogues in {elapsed:.0f} s: {'OK' if result.returncode == 0 else 'PROBLEMS FOUND'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
