"""Process-wide state shared by the sessions of one smtpd worker."""

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings

from mailadmin.accounts import credentials
from smtpd import backend
from smtpd.limits import RateWindow

log = logging.getLogger("smtpd")

PASSWORD_MECHANISMS = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
OAUTH_MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]  # when settings.OAUTH_ENABLED
# Threads of the cached-success pool: each job is one database read, no hashing.
FAST_THREADS = 4


def lower_thread_priority() -> None:
    """Raise this thread's nice value by SMTPD_ARGON2_NICE (Linux: per thread)."""
    if settings.SMTPD_ARGON2_NICE <= 0:
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + settings.SMTPD_ARGON2_NICE)


@dataclass
class Config:
    listen: list[str]
    tls_listen: list[str]
    tls_cert: str
    tls_key: str
    hostname: str
    node: str
    proxy_networks: list[str]
    auth_fail_delay: float
    max_auth_failures: int
    auth_rate_per_ip: int
    max_message_size: int
    max_recipients: int
    session_timeout: int
    drain_timeout: int
    threads: int
    metrics_listen: str
    spool_dir: str
    maildir: str
    relay_url: str
    worker_index: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls, **overrides) -> "Config":
        values = {
            "listen": settings.SMTPD_LISTEN,
            "tls_listen": settings.SMTPD_TLS_LISTEN,
            "tls_cert": settings.SMTPD_TLS_CERT,
            "tls_key": settings.SMTPD_TLS_KEY,
            "hostname": settings.SMTPD_HOSTNAME or socket.getfqdn(),
            "node": settings.SMTPD_NODE_NAME or socket.gethostname(),
            "proxy_networks": settings.SMTPD_PROXY_NETWORKS,
            "auth_fail_delay": settings.SMTPD_AUTH_FAIL_DELAY,
            "max_auth_failures": settings.SMTPD_MAX_AUTH_FAILURES,
            "auth_rate_per_ip": settings.SMTPD_AUTH_RATE_PER_IP,
            "max_message_size": settings.SMTPD_MAX_MESSAGE_SIZE,
            "max_recipients": settings.SMTPD_MAX_RECIPIENTS,
            "session_timeout": settings.SMTPD_SESSION_TIMEOUT,
            "drain_timeout": settings.SMTPD_DRAIN_TIMEOUT,
            "threads": settings.SMTPD_THREADS,
            "metrics_listen": settings.SMTPD_METRICS_LISTEN,
            "spool_dir": settings.SMTPD_SPOOL_DIR,
            "maildir": settings.SMTPD_MAILDIR,
            "relay_url": settings.RELAY_URL,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Listener:
    kind: str  # "starttls" or "tls"
    host: str
    port: int

    @property
    def implicit_tls(self) -> bool:
        return self.kind == "tls"


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("background job failed: %s", type(future.exception()).__name__)


class ServerContext:
    CRAM_CHECK_INTERVAL = 1.0  # seconds between "is CRAM-MD5 enabled anywhere?" queries

    def __init__(self, config: Config, loop, tls_context, publisher, relay):
        self.config = config
        self.loop = loop
        self.hostname = config.hostname
        self.node = config.node
        self.tls_context = tls_context
        self.publisher = publisher
        self.relay = relay
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="smtpd-verify")
        # Short database-only jobs run here, so they never queue behind jobs waiting for
        # an Argon2 slot (failures, cold logins): AUTHs the verifier will probably answer
        # from its success cache, the sender check, the allowlist and CRAM-MD5 flags.
        self.fast_executor = ThreadPoolExecutor(FAST_THREADS, thread_name_prefix="smtpd-cached")
        # Argon2 itself (failures, cold logins) runs on VERIFY_CONCURRENCY threads of
        # lower CPU priority: it takes the cores only when the event loop, the cached
        # logins and the database leave them idle. Its cost per attempt is unchanged.
        self.argon2_executor = ThreadPoolExecutor(
            settings.VERIFY_CONCURRENCY, thread_name_prefix="smtpd-argon2", initializer=lower_thread_priority
        )
        credentials.set_argon2_runner(self.argon2_executor)
        self.auth_rate = RateWindow(config.auth_rate_per_ip, 60.0)
        self.proxy_networks = [ipaddress.ip_network(n, strict=False) for n in config.proxy_networks]
        self.sessions: set = set()
        self.draining = False
        self._cram = (False, 0.0)
        self._blocks_refresh = None

    async def run(self, fn, *args):
        return await self.loop.run_in_executor(self.executor, partial(fn, *args))

    async def run_fast(self, fn, *args):
        return await self.loop.run_in_executor(self.fast_executor, partial(fn, *args))

    def submit_fast(self, fn, *args):
        """Run fn on the fast pool without waiting for it (bookkeeping that never raises)."""
        future = self.fast_executor.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def refresh_blocks_soon(self) -> None:
        """Keep the block snapshot polled for answers on the loop: one poll at a time, on the pool."""
        from mailadmin.monitoring.blocks import refresh_due

        if self._blocks_refresh is None and refresh_due():
            self._blocks_refresh = self.submit_fast(backend.refresh_blocks)
            self._blocks_refresh.add_done_callback(self._blocks_refreshed)

    def _blocks_refreshed(self, future) -> None:
        self._blocks_refresh = None

    def shutdown(self) -> None:
        self.fast_executor.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True, cancel_futures=True)
        credentials.set_argon2_runner(None)
        self.argon2_executor.shutdown(wait=True, cancel_futures=True)

    async def mechanisms(self) -> list[str]:
        enabled, checked = self._cram
        if time.monotonic() - checked > self.CRAM_CHECK_INTERVAL:
            try:
                enabled = await self.run_fast(backend.cram_md5_enabled)
            except Exception as exc:  # database down: keep the last answer
                log.warning("cannot tell whether CRAM-MD5 is enabled: %s", type(exc).__name__)
            self._cram = (enabled, time.monotonic())
        oauth = OAUTH_MECHANISMS if settings.OAUTH_ENABLED else []
        return PASSWORD_MECHANISMS + (["CRAM-MD5"] if enabled else []) + oauth

    def is_proxy(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.proxy_networks)
