"""The development certificate: generated once, and a matching pair even when several
processes start at the same moment (forked workers, two servers on one var/)."""

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
