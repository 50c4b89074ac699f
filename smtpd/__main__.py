"""`python -m smtpd [--workers N] [--listen host:port,...] [--tls-listen ...]`"""

import argparse
import os
import sys


def _addresses(value: str) -> list[str]:
    return [] if value.strip() == "-" else [a.strip() for a in value.split(",") if a.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smtpd", description="Mailadmin SMTP submission server")
    p.add_argument("--workers", type=int, default=None, help="worker processes sharing the ports (SO_REUSEPORT)")
    p.add_argument("--listen", type=_addresses, default=None, help="STARTTLS listeners, host:port,... ('-': none)")
    p.add_argument("--tls-listen", type=_addresses, default=None, help="implicit-TLS listeners ('-': none)")
    p.add_argument("--metrics-listen", default=None, help="host:port for /metrics (worker i uses port+i; '' off)")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parser().parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
    import django

    django.setup()
    from django.conf import settings

    from smtpd.context import Config
    from smtpd.server import serve, serve_workers

    config = Config.from_settings(
        listen=options.listen,
        tls_listen=options.tls_listen,
        metrics_listen=options.metrics_listen,
        worker_index=options.worker_index,
    )
    workers = options.workers or settings.SMTPD_WORKERS
    if workers > 1:
        return serve_workers(config, workers)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
