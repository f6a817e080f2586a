#!/bin/sh
# Bound the agents' per-host queues (lifecycle-stats.<host>) on the RabbitMQ node, as root on
# a broker node. While an agent is down its queue keeps receiving every INFO notification of
# nova's exchange; this caps it. oslo.messaging declares topic consumers' queues without
# arguments (impl_rabbit declare_topic_consumer), so the bound is a policy, not the agent's.
#
# An *operator* policy: RabbitMQ combines it with whatever regular policy (HA, quorum, ...)
# also matches these queues, taking the lower of two limits, instead of one replacing the
# other. Overflow is RabbitMQ's default, drop-head: the oldest messages go first.
#
#   lifecycle-stats-queue-policy.sh [--vhost /] [--message-ttl-ms 86400000]
#       [--max-length 100000] [--expires-ms 604800000] [--pattern '^lifecycle-stats\.']
#       [--name lifecycle-stats-queues] [--clear]
#
# message-ttl: a delete.start older than this is dropped (default 1 day).
# max-length:  at most this many messages wait per host (default 100000).
# expires:     a queue with no consumer for this long is deleted, e.g. a decommissioned
#              host's (default 7 days; an agent down longer loses what was queued).
set -eu
VHOST=/ TTL=86400000 MAXLEN=100000 EXPIRES=604800000 PATTERN='^lifecycle-stats\.'
NAME=lifecycle-stats-queues CLEAR=
while [ $# -gt 0 ]; do
  case "$1" in
    --vhost) VHOST=$2; shift 2 ;;
    --message-ttl-ms) TTL=$2; shift 2 ;;
    --max-length) MAXLEN=$2; shift 2 ;;
    --expires-ms) EXPIRES=$2; shift 2 ;;
    --pattern) PATTERN=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --clear) CLEAR=1; shift ;;
    *) echo "lifecycle-stats-queue-policy: unknown argument $1" >&2; exit 2 ;;
  esac
done
for n in "$TTL" "$MAXLEN" "$EXPIRES"; do
  case "$n" in ''|*[!0-9]*) echo "lifecycle-stats-queue-policy: not a number: $n" >&2; exit 2 ;; esac
done
if [ -n "$CLEAR" ]; then
  exec rabbitmqctl -q clear_operator_policy -p "$VHOST" "$NAME"
fi
exec rabbitmqctl -q set_operator_policy -p "$VHOST" --apply-to queues "$NAME" "$PATTERN" \
  "{\"message-ttl\": $TTL, \"max-length\": $MAXLEN, \"expires\": $EXPIRES}"
