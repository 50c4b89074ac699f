"""One SMTP submission session: aiosmtpd's connection and TLS plumbing with our
own command loop, AUTH and mail transaction.

Stock aiosmtpd 1.4.6 traps this class fixes (each has a test in tests/smtpd):
- the authenticator callback is synchronous: verification runs in a thread pool;
- AuthResult(success=False) without a message sends nothing: we always reply;
- AUTH on an implicit-TLS listener is refused: TLS is taken from the transport;
- mechanism names are matched case-sensitively: we upper-case them;
- LOGIN prompts are "User Name"/"Password" with a NUL: ours are Username:/Password:;
- AUTH inside a mail transaction is accepted: ours answers 503 5.5.1;
- the 512-octet command limit breaks OAuth tokens: AUTH lines and continuations
  may be 12,288 octets; a longer one gets one 500 5.5.6 and the session stays in step;
- exception text is sent to the client (500 Error: (KeyError) ...): never here.
"""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, TLSSetupException
from django.conf import settings

from mailadmin.accounts.fingerprint import pw_fp
from mailadmin.accounts.verify import normalise_username, probably_cached
from smtpd import backend, mechanisms
from smtpd.events import AUTH_EVENTS_TASK, MESSAGES_SENT_TASK
from smtpd.metrics import AUTH_ATTEMPTS, LOOP_ANSWERS, MESSAGES, SESSIONS, SESSIONS_TOTAL, VERIFY_LATENCY

log = logging.getLogger("smtpd.session")

AUTH_LINE_LIMIT = 12288  # octets, without CRLF (RFC 4954 + OAuth tokens)
COMMAND_LINE_LIMIT = 2048  # lenient: RFC 5321 asks for 512, extensions add parameters
DATA_LINE_LIMIT = AUTH_LINE_LIMIT
MAX_BOGUS_COMMANDS = 10

R_SUCCESS = "235 2.7.0 Authentication successful"
R_INVALID = "535 5.7.8 Authentication credentials invalid"
R_TEMP = "454 4.7.0 Temporary authentication failure"
R_TRANSITION = "432 4.7.12 A password transition is needed"
R_CANCELLED = "501 5.7.0 Authentication cancelled"
R_BAD_BASE64 = "501 5.5.2 Invalid base64 data"
R_MALFORMED = "501 5.5.2 Malformed authentication data"
R_AUTH_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
R_TOO_MANY_FAILURES = "421 4.7.0 Too many failed authentication attempts, closing connection"
R_RATE = "450 4.7.1 Too many authentication attempts, try again later"

# Verifier reasons -> auth event result (the DESIGN contract's vocabulary).
EVENT_RESULT = {
    "success": "success",
    "bad_credentials": "bad_credentials",
    "unknown_user": "unknown_user",
    "disabled": "disabled",
    "suspended": "disabled",
    "expired": "disabled",
    "app_password_required": "bad_credentials",
    "network_not_allowed": "blocked",
    "temp_failure": "temp_failure",
    "transition_needed": "temp_failure",
    "blocked": "blocked",
}
CREDENTIAL_FAILURES = {"bad_credentials", "unknown_user", "disabled"}


class LineTooLong(Exception):
    def __init__(self, head: bytes):
        self.head = head


class AuthAbort(Exception):
    """The AUTH dialogue ends early with this reply and event result."""

    def __init__(self, reply: str, result: str):
        self.reply = reply
        self.result = result


class SubmissionSMTP(SMTP):
    """One connection on a submission listener (STARTTLS or implicit TLS)."""

    def __init__(self, ctx, listener):
        self.ctx = ctx
        self.listener = listener
        super().__init__(
            None,
            hostname=ctx.hostname,
            ident="Mailadmin ESMTP",
            tls_context=None if listener.implicit_tls else ctx.tls_context,
            timeout=ctx.config.session_timeout,
            auth_required=True,
            auth_require_tls=True,
            data_size_limit=ctx.config.max_message_size,
            loop=ctx.loop,
        )
        # aiosmtpd sizes the reader for 1001-octet lines; AUTH needs 12,288.
        self._reader_limit(AUTH_LINE_LIMIT + 2)
        self.session_id = uuid.uuid4().hex[:16]
        self.client_ip = None
        self.helo = None
        self.auth_attempts = 0
        self.auth_failures = 0
        self.identity = None  # backend.Outcome after a successful AUTH
        self._bogus = 0

    def _reader_limit(self, limit: int) -> None:
        reader = self._stream_reader
        if reader is not None:
            reader._limit = limit

    # --- connection ---

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else "unknown"
            SESSIONS.inc()
            SESSIONS_TOTAL.labels(self.listener.kind).inc()
            self.ctx.sessions.add(self)

    def connection_lost(self, error):
        if self in self.ctx.sessions:
            self.ctx.sessions.discard(self)
            SESSIONS.dec()
        super().connection_lost(error)

    @property
    def tls_active(self) -> bool:
        return self.listener.implicit_tls or self._tls_protocol is not None

    def tls_info(self) -> dict | None:
        if not self.tls_active or self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return {"version": ssl_object.version(), "cipher": cipher[0] if cipher else None}

    async def push(self, status):
        if self.transport is None or self.transport.is_closing():
            return
        await super().push(status)

    def close(self):
        if self.transport is not None:
            self.transport.close()

    # --- the command loop (replaces SMTP._handle_client) ---

    async def _handle_client(self):
        try:
            # PROXY headers are read on STARTTLS listeners only: on an implicit-TLS
            # listener the TLS handshake comes first (a known limitation, see README).
            proxied = not self.listener.implicit_tls and self.ctx.is_proxy(self.client_ip)
            if proxied and not await self._read_proxy_header():
                self.close()
                return
            await self.push(f"220 {self.hostname} {self.__ident__}")
            while self.transport is not None and not self.transport.is_closing():
                try:
                    line = await self._readline()
                except LineTooLong as exc:
                    is_auth = exc.head[:5].upper() == b"AUTH "
                    await self.push(R_AUTH_TOO_LONG if is_auth else "500 5.5.2 Line too long")
                    if is_auth:
                        self._record_unparsed_auth("malformed")
                    continue
                if line is None:
                    break
                await self._dispatch(line)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, TLSSetupException, asyncio.IncompleteReadError):
            self.close()
        except Exception:
            log.exception("session %s: internal error", self.session_id)
            await self.push("421 4.3.0 Internal server error, closing connection")
            self.close()

    async def _read_proxy_header(self) -> bool:
        try:
            proxy = await asyncio.wait_for(get_proxy(self._reader), timeout=10)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return False
        if not proxy or not proxy.valid or proxy.src_addr is None:
            log.warning("session %s: invalid PROXY header from %s", self.session_id, self.client_ip)
            return False
        self.client_ip = str(proxy.src_addr)
        return True

    async def _readline(self) -> bytes | None:
        """One line without its CRLF; None at EOF; LineTooLong after discarding the rest of the line."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            head = await self._reader.read(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
            raise LineTooLong(head) from None
        self._reset_timeout()
        line = line.rstrip(b"\r\n")
        # The stream limit counts the separator index, so it lets one octet more
        # through than AUTH_LINE_LIMIT; the exact limit is enforced here.
        if len(line) > AUTH_LINE_LIMIT:
            raise LineTooLong(line[:64])
        return line

    async def _dispatch(self, line: bytes) -> None:
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.decode("ascii").upper()
            arg = arg_bytes.decode("ascii").strip() or None
        except UnicodeDecodeError:
            command, arg = "", None
        if not command or "\x00" in line.decode("latin-1") or not command.isalpha():
            await self._bogus_command("500 5.5.2 Syntax error")
            return
        if command != "AUTH" and len(line) > COMMAND_LINE_LIMIT:
            await self.push("500 5.5.2 Line too long")
            return
        method = self._smtp_methods.get(command)
        if method is None:
            await self._bogus_command("500 5.5.1 Command unrecognized")
            return
        if self.ctx.draining and command in ("MAIL", "AUTH") and not self.envelope.mail_from:
            await self.push("421 4.3.2 Service shutting down, try again later")
            self.close()
            return
        await method(arg)

    async def _bogus_command(self, reply: str) -> None:
        self._bogus += 1
        if self._bogus >= MAX_BOGUS_COMMANDS:
            await self.push("421 4.7.0 Too many errors, closing connection")
            self.close()
            return
        await self.push(reply)

    # --- simple commands ---

    async def smtp_HELO(self, arg):
        if not arg:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = self.helo = arg[:255]
        await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, arg):
        if not arg:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = self.helo = arg[:255]
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if not self.tls_active and self.tls_context is not None:
            lines.append("STARTTLS")
        if self.tls_active and not self.identity:
            lines.append("AUTH " + " ".join(await self.ctx.mechanisms()))
        lines.append("HELP")
        for line in lines[:-1]:
            await self.push(f"250-{line}")
        await self.push(f"250 {lines[-1]}")

    async def smtp_NOOP(self, arg):
        await self.push("250 2.0.0 OK")

    async def smtp_RSET(self, arg):
        self._set_rset_state()
        await self.push("250 2.0.0 OK")

    async def smtp_QUIT(self, arg):
        await self.push("221 2.0.0 Bye")
        self.close()

    async def smtp_HELP(self, arg):
        await self.push("214 2.0.0 See RFC 5321; this server accepts authenticated submission only")

    async def smtp_VRFY(self, arg):
        await self.push("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    async def smtp_EXPN(self, arg):
        await self.push("502 5.5.1 EXPN not implemented")

    async def smtp_STARTTLS(self, arg):
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
        elif self.tls_active:
            await self.push("503 5.5.1 TLS already active")
        elif self.tls_context is None:
            await self.push("454 4.7.0 TLS not available")
        else:
            helo = self.helo
            await super().smtp_STARTTLS(arg)
            # RFC 3207: the client must EHLO again; forget what it said before.
            self.helo = None if self.session.host_name is None else helo

    # --- AUTH ---

    async def smtp_AUTH(self, arg):
        started = time.monotonic()
        self.auth_attempts += 1
        event = self._new_event()
        try:
            reply, result, outcome = await self._auth(arg, event)
        except asyncio.CancelledError:
            event["result"] = event.get("result") or "cancelled"
            self._finish_event(event, started)
            raise
        except AuthAbort as abort:
            reply, result, outcome = abort.reply, abort.result, None
        except (ConnectionError, asyncio.IncompleteReadError):
            event["result"] = "cancelled"
            self._finish_event(event, started)
            raise
        event["result"] = result
        if outcome is not None:
            event["username"] = outcome.username or event["username"]
            event["credential"] = outcome.credential or "none"
        self._finish_event(event, started)
        if result in CREDENTIAL_FAILURES or (result == "malformed" and reply == R_INVALID):
            self.auth_failures += 1
            delay = self.ctx.config.auth_fail_delay
            if delay > 0:
                # Only this session waits; the event loop serves everyone else meanwhile.
                await asyncio.sleep(delay * random.uniform(0.75, 1.25))
            await self.push(reply)
            if self.auth_failures >= self.ctx.config.max_auth_failures:
                await self.push(R_TOO_MANY_FAILURES)
                self.close()
            return
        if result == "success":
            self.identity = outcome
            self.session.authenticated = True
        await self.push(reply)

    def _new_event(self) -> dict:
        return {
            "id": str(uuid.uuid4()),
            "ts": datetime.now(UTC).isoformat(),
            "node": self.ctx.node,
            "session_id": self.session_id,
            "attempt": self.auth_attempts,
            "client_ip": self.client_ip,
            "listener": self.listener.port,
            "tls": self.tls_info(),
            "helo": self.helo,
            "mechanism": None,
            "username": None,
            "credential": "none",
            "result": None,
            "pw_fp": None,
            "latency_ms": None,
        }

    def _finish_event(self, event: dict, started: float) -> None:
        event["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
        if event["username"]:
            event["username"] = event["username"][:254]
        AUTH_ATTEMPTS.labels(event["mechanism"] or "none", event["result"]).inc()
        self.ctx.publisher.publish(AUTH_EVENTS_TASK, event)

    def _record_unparsed_auth(self, result: str) -> None:
        self.auth_attempts += 1
        event = self._new_event()
        event["result"] = result
        self._finish_event(event, time.monotonic())

    async def _auth(self, arg, event):
        """Returns (reply, event result, Outcome | None); raises AuthAbort for early replies."""
        args = (arg or "").split()
        if args:
            name = args[0].upper()
            event["mechanism"] = name[:20] if name.replace("-", "").replace("_", "").isalnum() else "invalid"
        if not self.session.host_name or not self.session.extended_smtp:
            return "503 5.5.1 Send EHLO first", "malformed", None
        if self.envelope.mail_from:
            return "503 5.5.1 AUTH not permitted during a mail transaction", "malformed", None
        if self.identity:
            return "503 5.5.1 Already authenticated", "malformed", None
        if not args or len(args) > 2:
            return "501 5.5.4 Syntax: AUTH mechanism [initial-response]", "malformed", None
        mechanism = args[0].upper()
        if not self.tls_active:
            return "538 5.7.11 Encryption required for requested authentication mechanism", "tls_required", None
        if mechanism not in await self.ctx.mechanisms():
            return "504 5.5.4 Unrecognized authentication type", "malformed", None
        if not self.ctx.auth_rate.hit(self.client_ip) and not await self.ctx.run_fast(
            backend.is_allowlisted, self.client_ip
        ):
            return R_RATE, "blocked", None
        initial = args[1] if len(args) == 2 else None
        handler = {
            "PLAIN": self._auth_plain,
            "LOGIN": self._auth_login,
            "CRAM-MD5": self._auth_cram_md5,
            "SCRAM-SHA-256": self._auth_scram,
            "XOAUTH2": self._auth_xoauth2,
            "OAUTHBEARER": self._auth_oauthbearer,
        }[mechanism]
        return await handler(initial, event)

    async def _challenge(self, challenge: bytes) -> bytes:
        """Send a 334 challenge and return the decoded answer, or raise AuthAbort."""
        await self.push(b"334 " + mechanisms.b64encode(challenge).encode())
        try:
            line = await self._readline()
        except LineTooLong:
            raise AuthAbort(R_AUTH_TOO_LONG, "malformed") from None
        if line is None:
            raise asyncio.IncompleteReadError(b"", None)
        return self._decode(line)

    def _decode(self, blob: bytes | str) -> bytes:
        if isinstance(blob, str):
            blob = blob.encode()
        if blob.strip() == b"*":
            raise AuthAbort(R_CANCELLED, "cancelled")
        try:
            return mechanisms.b64decode_strict(blob)
        except mechanisms.Malformed:
            raise AuthAbort(R_BAD_BASE64, "malformed") from None

    async def _verify(self, mechanism: str, fn, *args, fast: bool = False):
        started = time.monotonic()
        try:
            return await (self.ctx.run_fast if fast else self.ctx.run)(fn, *args)
        except Exception as exc:  # verifier or database trouble: a temporary failure, no details to the client
            log.error("session %s: %s failed: %s", self.session_id, fn.__name__, type(exc).__name__)
            raise AuthAbort(R_TEMP, "temp_failure") from None
        finally:
            VERIFY_LATENCY.labels(mechanism).observe(time.monotonic() - started)

    def _reply_for(self, outcome) -> tuple[str, str, object]:
        result = EVENT_RESULT.get(outcome.reason, "temp_failure")
        if outcome.reason == "success":
            return R_SUCCESS, result, outcome
        if outcome.reason == "transition_needed":
            return R_TRANSITION, result, outcome
        if result in ("temp_failure", "blocked"):
            return R_TEMP, result, outcome
        return R_INVALID, result, outcome

    async def _password_auth(self, mechanism, event, username: str, password: str):
        event["username"] = username
        event["pw_fp"] = pw_fp(username, password)
        args = (self.client_ip, username, password, mechanism)
        outcome = None
        started = time.monotonic()
        answered = backend.cached_password(*args)
        if answered is not None:
            # Blocked, or a success the notified cache holds: answered on the loop, no thread hop.
            outcome, login = answered
            self.ctx.refresh_blocks_soon()
            VERIFY_LATENCY.labels(mechanism).observe(time.monotonic() - started)
            LOOP_ANSWERS.labels(outcome.reason).inc()
            if login is not None:
                self.ctx.submit_fast(backend.write_login, *login)
        elif probably_cached(username, password):
            # Answered from the verifier's success cache on a pool of its own: never
            # behind Argon2 work. None (it changed meanwhile): the full check below.
            outcome = await self._verify(mechanism, backend.verify_cached_password, *args, fast=True)
        if outcome is None:
            outcome = await self._verify(mechanism, backend.verify_password, *args)
        event["username"] = outcome.username
        return self._reply_for(outcome)

    async def _auth_plain(self, initial, event):
        blob = self._decode(initial) if initial is not None else await self._challenge(b"")
        try:
            creds = mechanisms.parse_plain(blob)
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        if creds.authzid and normalise_username(creds.authzid).lower() != normalise_username(creds.username).lower():
            # Acting as someone else is not offered: refuse without verifying anything.
            event["username"] = normalise_username(creds.username)
            return R_INVALID, "malformed", None
        return await self._password_auth("PLAIN", event, creds.username, creds.password)

    async def _auth_login(self, initial, event):
        blob = self._decode(initial) if initial is not None else await self._challenge(mechanisms.LOGIN_USERNAME_PROMPT)
        try:
            username = mechanisms.parse_login_field(blob, "username")
            event["username"] = username
            password = mechanisms.parse_login_field(await self._challenge(mechanisms.LOGIN_PASSWORD_PROMPT), "password")
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        return await self._password_auth("LOGIN", event, username, password)

    async def _auth_cram_md5(self, initial, event):
        if initial is not None:
            return "501 5.5.4 CRAM-MD5 takes no initial response", "malformed", None
        challenge = mechanisms.cram_challenge(self.hostname)
        try:
            username, digest = mechanisms.parse_cram_response(await self._challenge(challenge))
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        event["username"] = username
        outcome = await self._verify("CRAM-MD5", backend.cram_verify, self.client_ip, username, challenge, digest)
        return self._reply_for(outcome)

    async def _auth_scram(self, initial, event):
        server = mechanisms.ScramServer()
        blob = self._decode(initial) if initial is not None else await self._challenge(b"")
        try:
            username = server.client_first(blob)
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        event["username"] = username
        if server.authzid and server.authzid != username:
            return R_INVALID, "malformed", None
        outcome, lookup = await self._verify("SCRAM-SHA-256", backend.scram_lookup, self.client_ip, username)
        event["username"] = outcome.username
        if outcome.reason in ("blocked", "temp_failure", "transition_needed"):
            return self._reply_for(outcome)
        # Unknown and disabled users go through the whole dialogue (fake salt) and fail at the end.
        final = await self._challenge(server.server_first(lookup.salt, lookup.iterations))
        try:
            server_final = server.client_final(final, lookup.stored_key, lookup.server_key)
        except mechanisms.ScramProofMismatch:
            if outcome.reason == "success":
                outcome.reason = "bad_credentials"
            return self._reply_for(outcome)
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        if outcome.reason != "success":
            return self._reply_for(outcome)
        await self._challenge(server_final)  # the client answers with an empty line
        await self.ctx.run_fast(backend.record_login, outcome.mailbox_id, self.client_ip, "SCRAM-SHA-256")
        return self._reply_for(outcome)

    async def _auth_xoauth2(self, initial, event):
        return await self._bearer_auth("XOAUTH2", mechanisms.parse_xoauth2, initial, event)

    async def _auth_oauthbearer(self, initial, event):
        return await self._bearer_auth("OAUTHBEARER", mechanisms.parse_oauthbearer, initial, event)

    async def _bearer_auth(self, mechanism, parse, initial, event):
        blob = self._decode(initial) if initial is not None else await self._challenge(b"")
        try:
            creds = parse(blob)
        except mechanisms.Malformed:
            return R_MALFORMED, "malformed", None
        event["username"] = creds.username or None
        outcome = await self._verify(
            mechanism, backend.check_bearer, self.client_ip, creds.username, creds.token, mechanism
        )
        event["username"] = outcome.username
        if outcome.reason in ("success", "blocked", "temp_failure"):
            return self._reply_for(outcome)
        # A refused token: the JSON error challenge, the client's ^A / empty answer, then 535.
        with contextlib.suppress(AuthAbort):  # whatever the client answers, the exchange has failed
            await self._challenge(mechanisms.bearer_error(mechanism, settings.OAUTH_DISCOVERY_URL))
        if outcome.reason == "malformed":
            return R_INVALID, "malformed", outcome
        return self._reply_for(outcome)

    # --- mail transaction ---

    async def smtp_MAIL(self, arg):
        if not self.session.host_name:
            await self.push("503 5.5.1 Send EHLO first")
            return
        if not self.identity:
            await self.push("530 5.7.0 Authentication required")
            return
        if self.envelope.mail_from:
            await self.push("503 5.5.1 Nested MAIL command")
            return
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address>"
        arg = self._strip_command_keyword("FROM:", arg or "")
        if arg is None:
            await self.push(syntax)
            return
        address, rest = self._getaddr(arg)
        if address is None:
            await self.push("553 5.1.3 Malformed sender address")
            return
        params = self._getparams((rest or "").upper().split())
        if params is None:
            await self.push(syntax)
            return
        if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
            await self.push("501 5.5.4 BODY must be 7BIT or 8BITMIME")
            return
        size = params.pop("SIZE", None)
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                await self.push(syntax)
                return
            if int(size) > self.data_size_limit:
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        if params:
            await self.push("555 5.5.4 Unsupported MAIL parameters")
            return
        try:
            allowed, over_limit = await self.ctx.run_fast(backend.sender_check, self.identity.mailbox_id, address)
        except Exception as exc:
            log.error("session %s: sender check failed: %s", self.session_id, type(exc).__name__)
            await self.push("451 4.3.0 Temporary failure, try again later")
            return
        if not allowed:
            await self.push(f"553 5.7.1 Sender address rejected: not owned by {self.identity.username}")
            return
        if over_limit:
            await self.push("450 4.7.1 Sending rate limit exceeded, try again later")
            return
        self.envelope.mail_from = address
        await self.push("250 2.1.0 Sender OK")

    async def smtp_RCPT(self, arg):
        if not self.identity:
            await self.push("530 5.7.0 Authentication required")
            return
        if not self.envelope.mail_from:
            await self.push("503 5.5.1 Need MAIL command first")
            return
        arg = self._strip_command_keyword("TO:", arg or "")
        address, rest = self._getaddr(arg) if arg is not None else (None, None)
        if arg is None or not address:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>" if address != "" else "553 5.1.3 Bad address")
            return
        if rest and rest.strip():
            await self.push("555 5.5.4 Unsupported RCPT parameters")
            return
        if len(self.envelope.rcpt_tos) >= self.ctx.config.max_recipients:
            await self.push("452 4.5.3 Too many recipients")
            return
        self.envelope.rcpt_tos.append(address)
        await self.push("250 2.1.5 Recipient OK")

    async def smtp_DATA(self, arg):
        if not self.identity:
            await self.push("530 5.7.0 Authentication required")
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command first")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit
        lines, size, too_big, too_long = [], 0, False, False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)
                too_long = True
                continue
            if line in (b".\r\n", b".\n"):
                break
            size += len(line)
            if size > limit:
                too_big = True
            if too_big or too_long:
                lines.clear()
                continue
            lines.append(line[1:] if line.startswith(b".") else line)
        if too_big:
            await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
        elif too_long:
            await self.push("500 5.5.2 Line too long")
        else:
            await self._deliver(b"".join(lines))
        self._set_rset_state()

    def _received_header(self) -> bytes:
        tls = self.tls_info() or {}
        rcpt = f"\r\n\tfor <{self.envelope.rcpt_tos[0]}>" if len(self.envelope.rcpt_tos) == 1 else ""
        header = (
            f"Received: from {self.helo} ([{self.client_ip}])\r\n"
            f"\tby {self.hostname} (Mailadmin smtpd) with ESMTPSA id {self.session_id}\r\n"
            f"\t(version={tls.get('version')} cipher={tls.get('cipher')})\r\n"
            f"\t(authenticated sender: {self.identity.username}){rcpt};\r\n"
            f"\t{format_datetime(datetime.now(UTC))}\r\n"
        )
        return header.encode("utf-8", "replace")

    async def _deliver(self, content: bytes) -> None:
        message = self._received_header() + content
        try:
            await self.ctx.run(
                backend.deliver,
                self.ctx.relay,
                self.identity.mailbox_id,
                self.envelope.mail_from,
                list(self.envelope.rcpt_tos),
                message,
            )
        except Exception as exc:
            log.error("session %s: delivery failed: %s", self.session_id, type(exc).__name__)
            await self.push("451 4.3.0 Temporary delivery failure, try again later")
            return
        MESSAGES.inc()
        self.ctx.publisher.publish(
            MESSAGES_SENT_TASK,
            # The id makes the count idempotent when the batch is delivered twice.
            {
                "id": str(uuid.uuid4()),
                "username": self.identity.username,
                "ts": datetime.now(UTC).isoformat(),
                "count": 1,
            },
        )
        await self.push(f"250 2.0.0 Message accepted for delivery id {self.session_id}")
