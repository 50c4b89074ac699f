"""Delivery of accepted messages: to the smarthost in RELAY_URL, or by default
into a local Maildir under var/ so a development machine works offline.

RELAY_URL forms:
  smtp://user:pass@host:587          STARTTLS required, then AUTH if a user is given
  smtp://host:25?starttls=off        plain SMTP (a relay on the same machine)
  smtps://user:pass@host:465         implicit TLS
  add ?verify=off to accept a self-signed smarthost certificate (testing only)
"""

import logging
import mailbox
import smtplib
import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger("smtpd.relay")


class DeliveryError(Exception):
    """Delivery failed temporarily; the client is told to retry (451)."""


class MaildirRelay:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # mailbox.Maildir(create=True) checks, then mkdirs: forked workers starting together
        # race on it (FileExistsError). Creating the three folders idempotently first does not.
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(self.path, create=False)

    def deliver(self, mail_from: str, rcpt_tos: list[str], message: bytes) -> None:
        envelope = f"Return-Path: <{mail_from}>\r\n" + "".join(f"X-Original-To: {rcpt}\r\n" for rcpt in rcpt_tos)
        try:
            self._maildir.add(envelope.encode() + message)
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror}") from None

    def describe(self) -> str:
        return f"maildir {self.path}"


class SmarthostRelay:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ImproperlyConfigured("RELAY_URL must look like smtp://[user:pass@]host[:port] or smtps://...")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.implicit_tls else 587)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = not self.implicit_tls and options.get("starttls", "on") != "off"
        self.context = ssl.create_default_context()
        if options.get("verify") == "off":
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def deliver(self, mail_from: str, rcpt_tos: list[str], message: bytes) -> None:
        try:
            if self.implicit_tls:
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=30, context=self.context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=30)
            with client:
                client.ehlo()
                if self.starttls:
                    client.starttls(context=self.context)
                    client.ehlo()
                if self.username:
                    client.login(self.username, self.password or "")
                refused = client.sendmail(mail_from, rcpt_tos, message)
        except (smtplib.SMTPException, OSError) as exc:
            log.warning("smarthost %s:%s refused or failed: %s", self.host, self.port, type(exc).__name__)
            raise DeliveryError(type(exc).__name__) from None
        if refused:
            log.warning("smarthost refused %d recipient(s)", len(refused))

    def describe(self) -> str:
        return f"smarthost {'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


def relay_from_settings(relay_url: str, maildir: str):
    return SmarthostRelay(relay_url) if relay_url else MaildirRelay(maildir)
