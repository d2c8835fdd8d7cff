#!/bin/sh
# The schedule (`celery -A ninkik_tasks beat`). It uses RedBeat: the schedule and a lock live in Redis,
# so a second copy only stands by (and takes over if the first dies); entries never fire twice.
set -eu

exec celery -A ninkik_tasks beat "$@"
