#!/bin/sh
# Flower (`celery -A ninkik_tasks flower`): it shows task arguments and can revoke tasks, so never without auth.
# Flower reads FLOWER_BASIC_AUTH (user:password[,user2:password2]) itself; it stays off the command line.
# Its /api/workers is an inspect cached at start: ask it with ?refresh=1 for workers started since
# (docs/operations.md, "Flower").
set -eu

case "${FLOWER_BASIC_AUTH:-}" in
    *?:?*) ;;
    *)
        echo "flower.sh: FLOWER_BASIC_AUTH is not set to user:password: set it, Flower will not start without auth" >&2
        exit 2
        ;;
esac

exec celery -A ninkik_tasks flower --address=0.0.0.0 --port=5555 "$@"
