#!/bin/sh
# The chain's Celery worker (`celery -A ninkik_tasks worker`); scale by running more copies.
# The work waits on ECR and ninkik's API: 16 threads in one process keep that waiting overlapped for a
# fraction of the memory of prefork processes (bench/RESULTS.md). One process uses about one core: run one
# copy per core.
set -eu

exec celery -A ninkik_tasks worker \
    --pool="${NINKIK_WORKER_POOL:-threads}" \
    --concurrency="${NINKIK_WORKER_CONCURRENCY:-16}" \
    --queues="${NINKIK_WORKER_QUEUES:-ninkik-aws,ninkik-api,ninkik-control}" \
    --hostname="worker@%h" \
    -E \
    "$@"
