"""What the record of what ninkik has costs in Redis: bytes per image, per 10,000 images (holdings.py).

Writes the Holdings of N images (one tag each, a tenant's UUIDs, a 64-hex report key) into one repository's hash and
tag map through the report step's own script (Records.end_send), then reads Redis's MEMORY USAGE of both keys and
the server's used_memory before and after, against a redis-server of its own.

    .venv/bin/python bench/holdings.py [--images 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from pathlib import Path

import redis

from ninkik_tasks import local
from ninkik_tasks.holdings import Holding, Holdings
from ninkik_tasks.idempotency import Records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    n = parser.parse_args().images
    with tempfile.TemporaryDirectory() as work:
        proc, url = local.start_redis(Path(work))
        try:
            client = redis.Redis.from_url(url, decode_responses=True)
            records, holdings = Records(client, "bench"), Holdings(client, "bench")
            tenant, product = str(uuid.uuid4()), str(uuid.uuid4())
            where = ("123456789012", "eu-central-1", f"{tenant}/{product}")
            held, tags = holdings.key(*where), holdings.tags_key(*where)
            before = int(client.info("memory")["used_memory"])
            began = time.perf_counter()
            for i in range(n):
                key = hashlib.sha256(str(i).encode()).hexdigest()
                digest = "sha256:" + hashlib.sha256(f"d{i}".encode()).hexdigest()
                holding = Holding(
                    key=key, observed=time.time(), tags=[f"1.{i}"], scan="COMPLETE", scan_type="BASIC",
                    tenant=tenant, product=product,
                )  # fmt: skip
                records.end_send(key, "bench", 3600, None, (held, tags, digest, holding))
            seconds = time.perf_counter() - began
            after = int(client.info("memory")["used_memory"])
            sent = sum(int(client.memory_usage(k) or 0) for k in client.scan_iter(match="bench:sent:*", count=1000))
            record = int(client.memory_usage(held) or 0) + int(client.memory_usage(tags) or 0)
            print(f"{n} images: holdings + tag map {record / n:.0f} bytes/image, {record / n * 10_000 / 2**20:.2f} MiB "
                  f"per 10,000 images; the sent records beside them {sent / n:.0f} bytes/image; used_memory grew "
                  f"{(after - before) / n:.0f} bytes/image; {seconds / n * 1e6:.0f} us per end_send")  # fmt: skip
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
