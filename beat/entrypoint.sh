#!/bin/sh
# The schedule (`celery -A ninkik_tasks beat`): run exactly one, or every entry fires once per copy.
# Its state file goes to a writable volume (/data), as the image's own files are read-only to its user.
set -eu

exec celery -A ninkik_tasks beat \
    --schedule="${NINKIK_BEAT_SCHEDULE_FILE:-/data/celerybeat-schedule}" \
    "$@"
