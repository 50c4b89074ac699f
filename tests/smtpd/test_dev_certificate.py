"""Start-up state shared by processes that start at the same moment (forked workers, two
servers on one var/): one matching development certificate pair, one Maildir."""

import ssl
import threading

from smtpd.server import development_certificate


def test_simultaneous_starts_get_one_matching_pair(tmp_path):
    results, barrier = [], threading.Barrier(6)

    def start():
        barrier.wait()
        results.append(development_certificate(tmp_path, "smtp.test"))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    cert, key = results[0]
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # raises on a mismatch
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    before = cert.read_bytes()
    assert development_certificate(tmp_path, "smtp.test") == (cert, key) and cert.read_bytes() == before


def test_simultaneous_starts_share_one_maildir(tmp_path):
    from smtpd.relay import MaildirRelay

    errors, barrier = [], threading.Barrier(6)

    def start():
        barrier.wait()
        try:
            MaildirRelay(tmp_path / "maildir")
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in (tmp_path / "maildir").iterdir()) == ["cur", "new", "tmp"]
