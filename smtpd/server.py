"""Listeners, TLS, worker processes and graceful shutdown.

One worker is one asyncio process serving every listener. With --workers N the
parent reserves the ports (bound, not listening, SO_REUSEPORT) and starts N
worker processes that each listen on the same ports; the kernel spreads
connections over them. SIGTERM: stop accepting, let open sessions finish for
up to SMTPD_DRAIN_TIMEOUT seconds, answer the rest 421, flush auth events.
"""

import asyncio
import contextlib
import ctypes
import datetime
import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from smtpd.context import Config, Listener, ServerContext
from smtpd.events import SpoolingPublisher
from smtpd.metrics import start_metrics_server
from smtpd.relay import relay_from_settings
from smtpd.session import SubmissionSMTP

log = logging.getLogger("smtpd")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ImproperlyConfigured(f"smtpd listen address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (an explicit ":587" means all)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- TLS ---


def development_certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed pair for development, generated once into var/."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "smtpd-cert.pem", directory / "smtpd-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed development certificate in %s", cert_path)
    return cert_path, key_path


def tls_context(config: Config) -> ssl.SSLContext:
    cert, key = config.tls_cert, config.tls_key
    if not cert or not key:
        if not settings.DEBUG:
            raise ImproperlyConfigured("SMTPD_TLS_CERT and SMTPD_TLS_KEY are required when DEBUG is off")
        cert, key = development_certificate(Path(settings.VAR_DIR), config.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ImproperlyConfigured(f"cannot load SMTPD_TLS_CERT/SMTPD_TLS_KEY: {exc}") from None
    return context


# --- one worker ---


def reserve_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
        sock.setblocking(False)
    return sock


async def run_worker(config: Config, ready=print) -> None:
    loop = asyncio.get_running_loop()
    context = tls_context(config)
    publisher = SpoolingPublisher(Path(config.spool_dir) / f"worker-{config.worker_index}").start()
    relay = relay_from_settings(config.relay_url, config.maildir)
    ctx = ServerContext(config, loop, context, publisher, relay)
    servers, bound = [], {"starttls": [], "tls": []}
    for kind, addresses in (("starttls", config.listen), ("tls", config.tls_listen)):
        for address in addresses:
            host, port = split_address(address)
            try:
                sock = reserve_socket(host, port, listen=True)
            except OSError as exc:
                # An IPv6 loopback missing in a container must not stop the IPv4 listener.
                log.warning("cannot listen on %s: %s", address, exc.strerror)
                continue
            listener = Listener(kind, host, sock.getsockname()[1])
            server = await loop.create_server(
                lambda listener=listener: SubmissionSMTP(ctx, listener),
                sock=sock,
                **({"ssl": context, "ssl_handshake_timeout": 30} if kind == "tls" else {}),
            )
            servers.append(server)
            bound[kind].append(format_address(host, listener.port))
    if not servers:
        raise ImproperlyConfigured("smtpd could not listen on any address")
    metrics = None
    if config.metrics_listen:
        host, port = split_address(config.metrics_listen)
        if port:
            port += config.worker_index
        metrics = start_metrics_server(format_address(host, port), publisher)

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready(
        f"smtpd ready: worker={config.worker_index} starttls={','.join(bound['starttls'])} "
        f"tls={','.join(bound['tls'])} metrics={format_address(*metrics) if metrics else '-'} "
        f"relay={relay.describe()} pid={os.getpid()}"
    )
    await stop.wait()
    log.info("smtpd worker %d stopping: %d open sessions", config.worker_index, len(ctx.sessions))
    await drain(ctx, servers, config.drain_timeout)
    publisher.stop()
    ctx.shutdown()
    connections.close_all()


async def drain(ctx: ServerContext, servers, timeout: float) -> None:
    ctx.draining = True
    for server in servers:
        server.close()
    deadline = ctx.loop.time() + timeout
    while ctx.sessions and ctx.loop.time() < deadline:
        await asyncio.sleep(0.1)
    for session in list(ctx.sessions):
        await session.push("421 4.3.2 Service shutting down, try again later")
        session.close()
    await asyncio.sleep(0.05)


# asyncio gives every TLS connection a zero-filled 256 KiB read buffer (sslproto
# SSLProtocol.max_size), resident for the life of the connection: 1,000 idle TLS
# sessions cost 250 MiB. A TLS record is at most 16 KiB, so 32 KiB loses nothing.
TLS_READ_BUFFER = 32 * 1024
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def limit_memory_growth() -> None:
    """Per-process settings that keep an idle worker small (measured in bench/README.md)."""
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    # glibc raises its mmap threshold after the first large buffer is freed, so later
    # Argon2 buffers (19 MiB each) come from the verify threads' arenas and stay
    # resident (+150 MiB per worker). A fixed threshold keeps them mmapped: freed
    # buffers go back to the system.
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1024 * 1024)


def serve(config: Config) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    limit_memory_growth()
    asyncio.run(run_worker(config, ready=lambda line: print(line, flush=True)))


# --- several workers ---


def serve_workers(config: Config, workers: int, argv: list[str]) -> int:
    """Reserve the ports, start `workers` copies of this program, forward SIGTERM, wait."""
    reserved, resolved = [], {"starttls": [], "tls": []}
    for kind, addresses in (("starttls", config.listen), ("tls", config.tls_listen)):
        for address in addresses:
            host, port = split_address(address)
            try:
                sock = reserve_socket(host, port, listen=False)
            except OSError as exc:
                log.warning("cannot listen on %s: %s", address, exc.strerror)
                continue
            reserved.append(sock)
            resolved[kind].append(format_address(host, sock.getsockname()[1]))
    children = []
    for index in range(workers):
        args = [sys.executable, "-m", "smtpd", *argv, "--worker-index", str(index), "--workers", "1"]
        args += ["--listen", ",".join(resolved["starttls"]) or "-", "--tls-listen", ",".join(resolved["tls"]) or "-"]
        children.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    metrics = []
    for child in children:
        line = child.stdout.readline()
        if "ready" not in line:
            for other in children:
                other.terminate()
            log.error("an smtpd worker failed to start")
            return 1
        metrics.append(line.split("metrics=")[1].split()[0])
    print(
        f"smtpd ready: starttls={','.join(resolved['starttls'])} tls={','.join(resolved['tls'])} "
        f"metrics={','.join(metrics)} workers={workers} pid={os.getpid()}",
        flush=True,
    )

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    for sock in reserved:
        sock.close()
    return max(codes, default=0)
