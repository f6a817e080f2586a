#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 and accepts guest/guest (integration
# tier, demo). Idempotent; needs root. Installs rabbitmq-server if missing and starts it with
# `rabbitmq-server -detached` (no systemd in these containers). Fails loudly if it cannot.
# RABBITMQ_NODE_PORT / RABBITMQ_NODENAME are honoured (and passed to the broker) if set.
# The integration tier uses its own vhost (VHOST, default lifecycle-stats-test), so its
# exchanges and queues never mix with those of whatever else uses the broker's default vhost.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
PORT=${RABBITMQ_NODE_PORT:-5672}
WAIT=${RABBITMQ_START_TIMEOUT:-60}
VHOST=${LIFECYCLE_STATS_RABBIT_VHOST:-lifecycle-stats-test}
say() { echo "start_rabbitmq: $*"; }
die() { echo "start_rabbitmq: ERROR: $*" >&2; exit 1; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }
ctl() { timeout 60 rabbitmqctl ${RABBITMQ_NODENAME:+-n "$RABBITMQ_NODENAME"} -q "$@"; }

login_ok() {  # a real AMQP login as guest/guest into vhost $1, with the venv's kombu if any
  if [ -x .venv/bin/python ]; then
    .venv/bin/python - "$HOST" "$PORT" "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.parse, kombu
vhost = urllib.parse.quote(sys.argv[3], safe="")
kombu.Connection(f"amqp://guest:guest@{sys.argv[1]}:{sys.argv[2]}/{vhost}", connect_timeout=5) \
    .ensure_connection(max_retries=1, timeout=10).release()
PY
  else
    ctl authenticate_user guest guest >/dev/null 2>&1
  fi
}

show_logs() {
  for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
    [ -s "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
  done
  return 0
}

start_broker() {
  if ! command -v rabbitmq-server >/dev/null; then
    say "installing rabbitmq-server"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server
  fi
  port_open && return 0  # the package's postinst may have started it
  say "starting rabbitmq-server -detached"
  RABBITMQ_NODE_PORT=$PORT rabbitmq-server -detached || { show_logs; die "rabbitmq-server -detached failed"; }
  for _ in $(seq "$WAIT"); do
    port_open && return 0
    sleep 1
  done
  show_logs
  die "RabbitMQ did not listen on $HOST:$PORT within ${WAIT}s"
}

# The default node name needs a resolvable host name; decided on every run, so that a second
# run (the broker already up) asks the node this script started, not rabbit@<hostname>.
if [ -z "${RABBITMQ_NODENAME:-}" ] && ! getent hosts "$(hostname)" >/dev/null; then
  export RABBITMQ_NODENAME=rabbit@localhost
fi
port_open || start_broker
ctl await_startup || die "rabbitmqctl await_startup failed (broker on $HOST:$PORT not booted)"
if ! login_ok /; then
  say "guest/guest login refused; (re)creating user guest"
  ctl add_user guest guest 2>/dev/null || ctl change_password guest guest
  ctl set_permissions -p / guest '.*' '.*' '.*'
  login_ok / || die "guest/guest cannot log in to $HOST:$PORT"
fi
if ! ctl list_vhosts name | grep -qxF "$VHOST"; then
  say "adding vhost $VHOST for the integration tier"
  ctl add_vhost "$VHOST"
fi
ctl set_permissions -p "$VHOST" guest '.*' '.*' '.*'
login_ok "$VHOST" || die "guest/guest cannot log in to vhost $VHOST on $HOST:$PORT"
say "RabbitMQ ready on $HOST:$PORT (guest/guest, vhost $VHOST)"
