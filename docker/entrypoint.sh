#!/bin/sh
# Entrypoint of the relaytrain worker image: runs `relay worker` from the environment.
#
#   COMMANDER_URL      required: the commander the worker serves, e.g. http://10.0.0.5:8080
#   RELAY_TOKEN        a worker token (relay token create --scope worker); unset for an open commander
#   WORKER_ID          the worker's unique id; default: this machine's hostname
#   RELAY_WORKDIR      where runs, checkpoints and logs live; default: /mnt/relay (mount a volume there)
#   RELAY_PROVIDER     recorded in the run's ledger (local, ssh, lium); optional
#   RELAY_WORKER_ARGS  more `relay worker` options, e.g. "--label region=eu --price-per-hour 2.1"
#   RELAY_CA_CERT      the CA certificate (a file in the container: mount it) of an https:// commander
#                      (relay tls init's ca.pem); unset: the public CAs. `relay worker` reads it itself.
#
# Extra arguments to the container are passed to `relay worker` as well. SIGTERM reaches the
# worker (tini forwards it): the run is checkpointed and released as preempted.
set -eu

if [ -z "${COMMANDER_URL:-}" ]; then
    echo "relay-entrypoint: COMMANDER_URL is not set; give the commander's URL," \
        "e.g. -e COMMANDER_URL=http://10.0.0.5:8080" >&2
    exit 78
fi
if ! command -v relay >/dev/null 2>&1; then
    echo "relay-entrypoint: 'relay' is not on PATH ($PATH): install relaytrain in this image" >&2
    exit 78
fi

WORKER_ID="${WORKER_ID:-$(uname -n)}"
RELAY_WORKDIR="${RELAY_WORKDIR:-/mnt/relay}"
mkdir -p "$RELAY_WORKDIR"
export WORKER_ID RELAY_WORKDIR
# The token goes through the environment, never the command line (where ps would show it).
if [ -n "${RELAY_TOKEN:-}" ]; then
    export RELAY_TOKEN
fi

set -- --commander "$COMMANDER_URL" --worker-id "$WORKER_ID" --workdir "$RELAY_WORKDIR" "$@"
if [ -n "${RELAY_PROVIDER:-}" ]; then
    set -- --provider "$RELAY_PROVIDER" "$@"
fi

echo "relay-entrypoint: worker $WORKER_ID serving $COMMANDER_URL from $RELAY_WORKDIR" >&2
# shellcheck disable=SC2086  # RELAY_WORKER_ARGS is split into options on purpose
exec relay worker ${RELAY_WORKER_ARGS:-} "$@"
