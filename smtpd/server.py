"""Listeners, TLS, worker processes and graceful shutdown.

One worker is one asyncio process serving every listener. With --workers N the
parent reserves the ports (bound, not listening, SO_REUSEPORT), imports what the
workers need and forks N worker processes that each listen on the same ports;
the kernel spreads connections over them. SIGTERM: stop accepting, let open sessions finish for
up to SMTPD_DRAIN_TIMEOUT seconds, answer the rest 421, flush auth events.
"""

import asyncio
import contextlib
import ctypes
import dataclasses
import datetime
import fcntl
import functools
import gc
import importlib
import ipaddress
import logging
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from mailadmin.accounts import verify_cache
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
    cert_path, key_path = directory / "smtpd-cert.pem", directory / "smtpd-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    # Several processes may start at once (workers, a second smtpd on the same var/):
    # one generates the pair under an exclusive lock, the others then find it.
    with open(directory / "smtpd-cert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        return _generate_development_certificate(cert_path, key_path, hostname)


def _generate_development_certificate(cert_path: Path, key_path: Path, hostname: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
    verify_cache.start()  # PostgreSQL: this worker's LISTEN for credential changes
    servers, bound = [], {"starttls": [], "tls": []}
    accepted = [0]

    def new_session(listener: Listener) -> SubmissionSMTP:
        accepted[0] += 1
        return SubmissionSMTP(ctx, listener)

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
                functools.partial(new_session, listener),
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
    housekeeping = loop.create_task(release_memory_after_bursts(lambda: accepted[0]))
    await stop.wait()
    housekeeping.cancel()
    log.info("smtpd worker %d stopping: %d open sessions", config.worker_index, len(ctx.sessions))
    await drain(ctx, servers, config.drain_timeout)
    publisher.stop()
    verify_cache.stop()
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


# asyncio gives every TLS connection a zero-filled read buffer of its own (sslproto
# SSLProtocol.max_size, 256 KiB by default), resident for the life of the connection.
# It is only a landing zone: the selector loop recv()s into it and buffer_updated()
# copies the bytes into the connection's incoming MemoryBIO on its first line, in the
# same synchronous call. So every TLS protocol of one thread can share one buffer
# (SharedBufferSSLProtocol); max_size still sets how much is read at once (one TLS
# record is at most 16 KiB).
TLS_READ_BUFFER = 16 * 1024
# Python versions whose sslproto was checked to use _ssl_buffer only as above.
SHARED_TLS_BUFFER_PYTHONS = ((3, 11), (3, 12), (3, 13))
M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def _shared_buffer_protocol():
    from asyncio import selector_events, sslproto

    class SharedBufferSSLProtocol(sslproto.SSLProtocol):
        """asyncio's TLS protocol with one read buffer per thread instead of one per
        connection: 16 KiB less per idle TLS session (bench/README.md)."""

        _local = threading.local()

        def __init__(self, loop, *args, **kwargs):
            super().__init__(loop, *args, **kwargs)
            # Only the selector loop fills and drains the buffer in one call; the
            # proactor loop (Windows) keeps it across an overlapped recv.
            if isinstance(loop, selector_events.BaseSelectorEventLoop) and hasattr(self, "_ssl_buffer_view"):
                view = getattr(self._local, "view", None)
                if view is None or len(view) < self.max_size:
                    view = self._local.view = memoryview(bytearray(self.max_size))
                self._ssl_buffer, self._ssl_buffer_view = view.obj, view

    return SharedBufferSSLProtocol


def share_tls_read_buffers() -> bool:
    """Install SharedBufferSSLProtocol where asyncio and aiosmtpd look SSLProtocol up
    (the sslproto module, at each new connection). False when this Python's sslproto
    was not checked, or does not have the expected shape: connections then keep
    buffers of their own, which is only bigger."""
    from asyncio import sslproto

    current = sslproto.SSLProtocol
    if getattr(current, "_local", None) is not None:  # already installed
        return True
    if sys.version_info[:2] not in SHARED_TLS_BUFFER_PYTHONS:
        return False
    if not all(hasattr(current, name) for name in ("get_buffer", "buffer_updated", "max_size")):
        return False
    sslproto.SSLProtocol = _shared_buffer_protocol()
    return True


def limit_memory_growth() -> None:
    """Per-process settings that keep an idle worker small (measured in bench/README.md)."""
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    share_tls_read_buffers()
    # glibc raises its mmap threshold after the first large buffer is freed, so later
    # Argon2 buffers (19 MiB each) come from the verify threads' arenas and stay
    # resident (+150 MiB per worker). A fixed threshold keeps them mmapped: freed
    # buffers go back to the system.
    # Each of the ~36 threads would otherwise get a malloc arena of its own (up to 8 per
    # core), each keeping its freed memory: two arenas hold a worker's growth under load.
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


# After a burst of sessions ends, their memory stays with the worker: a closed
# session's objects are reference cycles (protocol, task, transport), and a quiet
# worker allocates too little to trigger the collector; what the collector frees
# goes back to glibc's heap, which keeps it unless trimmed. Measured after 1,000
# TLS sessions closed: gc.collect() 8 MiB, then malloc_trim(0) 35 MiB more.
RELEASE_CHECK_INTERVAL = 10.0  # seconds
RELEASE_AFTER_SESSIONS = 64  # accepted since the last release
RELEASE_QUIET_SESSIONS = 8  # at most this many accepted in the last interval: the burst is over


def release_memory() -> bool:
    """Collect garbage cycles and give glibc's free heap pages back; False without glibc."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def burst_ended(since_release: int, last_interval: int) -> bool:
    """Enough sessions since the last release, and few in the last interval."""
    return since_release >= RELEASE_AFTER_SESSIONS and last_interval <= RELEASE_QUIET_SESSIONS


async def release_memory_after_bursts(accepted, interval: float = RELEASE_CHECK_INTERVAL) -> None:
    """Call release_memory() once a burst of sessions has ended. `accepted()` counts the
    sessions accepted so far; under steady load nothing is done (the memory is reused)."""
    released_at = last = accepted()
    while True:
        await asyncio.sleep(interval)
        now = accepted()
        if burst_ended(now - released_at, now - last):
            started = time.monotonic()
            release_memory()
            log.debug(
                "released memory after %d sessions in %.1f ms", now - released_at, (time.monotonic() - started) * 1000
            )
            released_at = now
        last = now


def serve(config: Config, ready=None) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    limit_memory_growth()
    asyncio.run(run_worker(config, ready=ready or (lambda line: print(line, flush=True))))


# --- several workers ---


def _preload() -> None:
    """Import what a worker imports while serving, before forking, so the workers
    share those pages with the parent instead of each loading its own copy."""
    import aiosmtpd.smtp  # noqa: F401
    import argon2  # noqa: F401
    import prometheus_client  # noqa: F401

    # What the first AUTH, cache access and event batch would import in each worker
    # (94 modules, 5+ MiB of code objects per worker, measured with bench/smtp_memory.py
    # --tracemalloc): the hashers, the cache backend, Celery's sending side and the
    # broker's kombu transport (with redis-py). Modules only (and the hashers list the
    # first verification builds): nothing connects.
    from celery.utils.imports import symbol_by_name
    from django.contrib.auth.hashers import get_hashers
    from kombu.transport import resolve_transport

    import mailadmin.accounts.verify  # noqa: F401
    import mailadmin.monitoring.blocks  # noqa: F401
    import mailadmin.monitoring.models  # noqa: F401
    import smtpd.backend  # noqa: F401
    import smtpd.limits  # noqa: F401
    from mailadmin.celery import app

    get_hashers()
    for cache in settings.CACHES.values():
        symbol_by_name(cache["BACKEND"])
    with contextlib.suppress(ImportError, KeyError, ValueError):  # only an optimisation
        symbol_by_name(resolve_transport(app.conf.broker_url.partition("://")[0]))
    for module in SENDING_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


# Modules app.send_task() imports on its first call (and the IDNA codec, for domains).
SENDING_MODULES = (
    "celery.app.amqp",
    "celery.app.events",
    "celery.app.task",
    "celery.backends.base",
    "celery.canvas",
    "celery.events.dispatcher",
    "celery.result",
    "encodings.idna",
    "kombu.message",
)


def _run_child(config: Config, index: int, resolved: dict, reserved: list, ready_fd: int) -> None:
    """The forked worker: serve, then leave without running the parent's code."""
    code = 1
    try:
        for sock in reserved:
            sock.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        worker = dataclasses.replace(
            config, worker_index=index, listen=resolved["starttls"], tls_listen=resolved["tls"]
        )
        serve(worker, ready=lambda line: os.write(ready_fd, (line + "\n").encode()))
        code = 0
    except BaseException:
        log.exception("smtpd worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def serve_workers(config: Config, workers: int) -> int:
    """Reserve the ports, fork `workers` worker processes, forward SIGTERM, wait.

    The workers are forked after Django and the server code are imported (and the
    garbage collector told to leave those objects alone), so their memory pages are
    shared with the parent and each other until written: measured in bench/README.md."""
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
    tls_context(config)  # a bad certificate fails here, once; the development pair is made before forking
    _preload()
    connections.close_all()  # nothing the workers could share by accident
    gc.collect()
    gc.freeze()  # the collector would otherwise touch (and so copy) every shared object
    ready_r, ready_w = os.pipe()
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _run_child(config, index, resolved, reserved, ready_w)
        children.append(pid)
    os.close(ready_w)
    lines = _ready_lines(ready_r, children, workers)
    if lines is None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):  # already reaped
                os.waitpid(pid, 0)
        log.error("an smtpd worker failed to start")
        return 1
    metrics = [line.split("metrics=")[1].split()[0] for line in lines]
    print(
        f"smtpd ready: starttls={','.join(resolved['starttls'])} tls={','.join(resolved['tls'])} "
        f"metrics={','.join(metrics)} workers={workers} pid={os.getpid()}",
        flush=True,
    )

    def forward(signum, frame):
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    for pid in children:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
                continue
        codes.append(os.waitstatus_to_exitcode(status))
    for sock in reserved:
        sock.close()
    return max((abs(code) for code in codes), default=0)


def _ready_lines(fd: int, children: list[int], workers: int, timeout: float = 120) -> list[str] | None:
    """Each worker's ready line, or None when one exits (or none come) first."""
    buffer, lines = b"", []
    deadline = time.monotonic() + timeout
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while len(lines) < workers and time.monotonic() < deadline:
            readable, _, _ = select.select([pipe], [], [], 0.5)
            if readable:
                chunk = pipe.read(4096)
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in done if b"ready" in line]
                if chunk:
                    continue
            if any(os.waitpid(pid, os.WNOHANG)[0] for pid in children):
                return None
    return lines if len(lines) == workers else None
