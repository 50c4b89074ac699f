"""Cost of one Argon2id password check for Django's defaults and OWASP's rows.

    .venv/bin/python bench/argon2_cost.py [--rounds 20]

Prints the median wall time per hash (one thread), hashes/second with all
cores busy, and the memory each hash needs (m KiB, allocated per computation).
Results and the chosen defaults: bench/README.md and README "Password hashing cost".
"""

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from argon2.low_level import Type, hash_secret_raw

CANDIDATES = [
    ("Django 5.2 default", 102400, 2, 8),
    ("OWASP m=47104 t=1 p=1", 47104, 1, 1),
    ("OWASP m=19456 t=2 p=1 (chosen)", 19456, 2, 1),
    ("OWASP m=12288 t=3 p=1", 12288, 3, 1),
    ("OWASP m=9216 t=4 p=1", 9216, 4, 1),
    ("OWASP m=7168 t=5 p=1", 7168, 5, 1),
]


def one_hash(memory_kib, time_cost, parallelism):
    hash_secret_raw(b"correct horse battery staple", os.urandom(16), time_cost, memory_kib, parallelism, 32, Type.ID)


def measure(memory_kib, time_cost, parallelism, rounds):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_hash(memory_kib, time_cost, parallelism)
        samples.append(time.perf_counter() - start)
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda _: one_hash(memory_kib, time_cost, parallelism), range(rounds * cores)))
    throughput = rounds * cores / (time.perf_counter() - start)
    return statistics.median(samples), throughput


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; {args.rounds} rounds each")
    print(f"{'parameters':34} {'ms/hash':>8} {'hashes/s (all cores)':>21} {'MiB/hash':>9}")
    for name, memory_kib, time_cost, parallelism in CANDIDATES:
        median, throughput = measure(memory_kib, time_cost, parallelism, args.rounds)
        print(f"{name:34} {median * 1000:8.1f} {throughput:21.1f} {memory_kib / 1024:9.1f}")


if __name__ == "__main__":
    main()
