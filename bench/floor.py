"""The floor: the pipeline's AWS calls and POSTs for the same images, by a plain loop (no Celery, no ingest).

For each image: ecr:DescribeImages and ecr:DescribeImageScanFindings through ninkik_tasks.ecr, the
report and Idempotency-Key as the notify step makes them, and the POST through ninkik_tasks.notify.send.
Run as its own process by bench/pipeline.py so that its CPU is counted apart from the stand-in's:

    python bench/floor.py --aws-url URL --api-url URL --token T --tenants FILE --images FILE --threads N

prints {"seconds": wall, "cpu": user + system CPU seconds of this process, "images": n, "retries": POSTs sent
again after a TransientError} as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx

from ninkik_tasks import ecr, local
from ninkik_tasks.errors import TransientError
from ninkik_tasks.findings import Report
from ninkik_tasks.notify import idempotency_key, images_url, render, send
from ninkik_tasks.tenants import Match


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--aws-url", "--api-url", "--token", "--tenants", "--images"):
        parser.add_argument(name, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: one image after the other")
    args = parser.parse_args()
    tenant = json.loads(Path(args.tenants).read_text())[0]
    products = {p["name"]: p["uuid"] for p in tenant["products"]}
    images: list[list[str]] = json.loads(Path(args.images).read_text())
    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench", region_name=local.REGION)
    client: Any = session.client("ecr", endpoint_url=args.aws_url)  # boto3 clients are thread-safe
    http = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=max(args.threads, 1)))
    retries: list[str] = []

    def one(item: list[str]) -> None:
        repository, digest = item
        tenant_uuid, name = repository.split("/", 1)
        match = Match(tenant=tenant_uuid, product=products[name], product_name=name, component="")
        image = ecr.describe_image(client, local.ACCOUNT, local.REGION, repository, digest)
        report = Report(image=image, scan=ecr.scan_findings(client, image))
        body, url, key = render(report, "push"), images_url(args.api_url, match), idempotency_key(match, report)
        for attempt in range(3):  # as the chain retries a TransientError (a connection the loaded machine reset)
            try:
                send(http, url, args.token, key, body)
                return
            except TransientError:
                if attempt == 2:
                    raise
                retries.append(key)

    one(images[0])  # warm-up: clients, connections, imports
    cpu, began = cpu_seconds(), time.monotonic()
    if args.threads:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(one, images[1:]))
    else:
        for item in images[1:]:
            one(item)
    figures = {"seconds": time.monotonic() - began, "cpu": cpu_seconds() - cpu, "images": len(images) - 1}
    print(json.dumps({**figures, "retries": len(retries)}))


if __name__ == "__main__":
    main()
