#!/bin/sh
# Flower through `ninkik-tasks flower`: it shows task arguments and can revoke tasks, so that command refuses to
# start without FLOWER_BASIC_AUTH (user:password[,user2:password2]), which Flower reads itself (it stays off the
# command line). Its /api/workers is an inspect cached at start: ask it with ?refresh=1 for workers started since
# (docs/operations.md, "Flower").
set -eu

exec ninkik-tasks flower --address=0.0.0.0 --port=5555 "$@"
