#!/bin/sh
# The chain's Celery worker (`celery -A ninkik_tasks worker`); scale by running more copies.
# The work is I/O-bound (ECR and ninkik HTTP calls), so more processes than cores pay off.
set -eu

exec celery -A ninkik_tasks worker \
    --pool="${NINKIK_WORKER_POOL:-prefork}" \
    --concurrency="${NINKIK_WORKER_CONCURRENCY:-8}" \
    --queues="${NINKIK_WORKER_QUEUES:-ninkik-aws,ninkik-api,ninkik-control}" \
    --hostname="worker@%h" \
    -E \
    "$@"
