"""The worker's memory mechanisms (smtpd/server.py): one TLS read buffer per thread,
and the release of memory after a burst of sessions. The whole tests/smtpd suite
runs its TLS sessions through the shared buffer too (the server subprocess installs it)."""

import asyncio
import ssl
from asyncio import sslproto
from concurrent.futures import ThreadPoolExecutor

import pytest

from smtpd import server


@pytest.fixture
def original_protocol():
    """Install/uninstall around a test: the pytest process keeps asyncio's own class."""
    original = sslproto.SSLProtocol
    yield original
    sslproto.SSLProtocol = original


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return server.development_certificate(tmp_path_factory.mktemp("tls"), "localhost")


def run_on_own_loop(coroutine):
    """asyncio.run on a thread of its own: earlier tests in the same pytest
    process (Playwright's sync API) may leave a loop running on the main thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def contexts(certificate):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    return server_context, client_context


async def echo_round_trips(server_context, client_context, payloads):
    """Two TLS connections at once, each echoing its payload (larger than the
    buffer, so reads of both interleave); returns (echoed, server protocols)."""
    protocols = []

    async def echo(reader, writer):
        protocols.append(writer.transport._ssl_protocol)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    port = srv.sockets[0].getsockname()[1]

    async def client(payload):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        writer.write(payload)
        await writer.drain()
        received = b""
        while len(received) < len(payload):
            received += await reader.read(65536)
        writer.close()
        return received

    echoed = await asyncio.gather(*(client(p) for p in payloads))
    srv.close()
    await srv.wait_closed()
    return echoed, protocols


def test_tls_connections_share_one_read_buffer_and_data_stays_intact(original_protocol, certificate):
    original_protocol.max_size, saved = server.TLS_READ_BUFFER, original_protocol.max_size
    try:
        assert server.share_tls_read_buffers()
        assert sslproto.SSLProtocol is not original_protocol
        assert server.share_tls_read_buffers()  # idempotent
        payloads = [bytes([i]) * 200_000 + b"end" for i in (1, 2)]
        echoed, protocols = run_on_own_loop(echo_round_trips(*contexts(certificate), payloads))
    finally:
        original_protocol.max_size = saved
    assert echoed == payloads
    assert len(protocols) == 2
    assert protocols[0]._ssl_buffer is protocols[1]._ssl_buffer
    assert len(protocols[0]._ssl_buffer) == server.TLS_READ_BUFFER


def test_without_the_shared_buffer_each_connection_has_its_own(original_protocol, certificate):
    payloads = [b"x" * 40_000, b"y" * 40_000]
    echoed, protocols = run_on_own_loop(echo_round_trips(*contexts(certificate), payloads))
    assert echoed == payloads
    assert protocols[0]._ssl_buffer is not protocols[1]._ssl_buffer


def test_an_unchecked_python_keeps_asyncio_s_protocol(original_protocol, monkeypatch):
    monkeypatch.setattr(server, "SHARED_TLS_BUFFER_PYTHONS", ())
    assert server.share_tls_read_buffers() is False
    assert sslproto.SSLProtocol is original_protocol


def test_release_waits_for_the_end_of_a_burst():
    assert server.burst_ended(since_release=100, last_interval=0)
    assert server.burst_ended(since_release=server.RELEASE_AFTER_SESSIONS, last_interval=server.RELEASE_QUIET_SESSIONS)
    assert not server.burst_ended(since_release=100, last_interval=50)  # still busy: the memory is reused
    assert not server.burst_ended(since_release=10, last_interval=0)  # too little happened


def test_memory_is_released_once_after_a_burst(monkeypatch):
    calls = []
    monkeypatch.setattr(server, "release_memory", lambda: calls.append(True))
    accepted = [0]

    async def scenario():
        task = asyncio.create_task(server.release_memory_after_bursts(lambda: accepted[0], interval=0.01))
        await asyncio.sleep(0.015)
        accepted[0] += 100  # a burst, then quiet
        await asyncio.sleep(0.1)
        task.cancel()

    run_on_own_loop(scenario())
    assert calls == [True]


def test_release_memory_collects_and_trims():
    assert server.release_memory() is True  # glibc here: malloc_trim was called
