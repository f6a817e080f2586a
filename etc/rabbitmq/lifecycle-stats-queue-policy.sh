#!/bin/sh
# Bound the agents' per-host queues (lifecycle-stats.<host>) on the RabbitMQ node, as root on
# a broker node, so that no bound ever drops a delete.start. oslo.messaging declares these
# queues without arguments (impl_rabbit declare_topic_consumer), so the bound is a policy.
#
#   lifecycle-stats-queue-policy.sh [--mode direct|router] [--vhost /]
#       [--pattern '^lifecycle-stats\.'] [--name lifecycle-stats-queues] [--clear]
#       direct: [--message-ttl-ms 86400000] [--expires-ms 604800000]
#       router: [--max-length 100000] [--priority 10]
#
# --mode direct (default; agents with [notification_listener] source = direct): each queue
#   receives every INFO notification of nova's exchange. AMQP routes by topic and priority
#   only (notifications.info), so a length bound cannot tell a delete.start from an
#   instance.update: max-length drops the oldest message whatever it is, and under real
#   cluster rates that is a delete.start after minutes of agent downtime. So this mode sets
#   NO length bound (--max-length is refused), only an age bound: an operator policy with
#     message-ttl  a message older than this is dropped (default 1 day): a delete.start
#                  waits for its agent for that long, whatever the rate;
#     expires      a queue with no consumer for this long is deleted with what it holds
#                  (default 7 days: a decommissioned host's).
#   The broker holds rate x TTL messages per down agent: doc/operating.md gives the bytes per
#   message measured by tests/integration/test_queue_policy_real.py to size it. Large sites
#   use the router, whose host queues hold only lifecycle events.
# --mode router (agents with source = router, fed by lifecycle-stats-router): each queue holds
#   only this host's lifecycle events and nova's exists for it. Two policies:
#     an operator policy  max-length (default 100000)
#     a regular policy    overflow: reject-publish (name <name>-overflow, --priority 10)
#   A full queue refuses new events instead of dropping old ones; the broker nacks the
#   router's publish and the router parks the event in its parking queue, counted
#   (lifecycle_stats_router_messages_total{outcome="parked"}). No message-ttl and no expires:
#   either would drop events silently; delete a decommissioned host's queue by hand.
#   Only one regular policy applies to a queue: if another one (with a higher priority)
#   matches these queues, add "overflow": "reject-publish" to it; one with a lower priority
#   (a site's ha-all, say) stops applying to them. The script lists the vhost's other regular
#   policies on stderr so that either can be seen; merge what must stay into <name>-overflow.
# An operator policy combines with whatever regular policy also matches (the lower limit
# wins) instead of replacing it; RabbitMQ 3.10 refuses "overflow" in operator policies.
set -eu
MODE=direct VHOST=/ TTL=86400000 MAXLEN=100000 EXPIRES=604800000 PATTERN='^lifecycle-stats\.'
NAME=lifecycle-stats-queues CLEAR= PRIORITY=10 DIRECT_ONLY= ROUTER_ONLY=
die() { echo "lifecycle-stats-queue-policy: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || [ "$1" = --clear ] || die "$1 needs a value"
  case "$1" in
    --mode) MODE=$2; shift 2 ;;
    --vhost) VHOST=$2; shift 2 ;;
    --message-ttl-ms) TTL=$2; DIRECT_ONLY="$DIRECT_ONLY $1"; shift 2 ;;
    --expires-ms) EXPIRES=$2; DIRECT_ONLY="$DIRECT_ONLY $1"; shift 2 ;;
    --max-length) MAXLEN=$2; ROUTER_ONLY="$ROUTER_ONLY $1"; shift 2 ;;
    --priority) PRIORITY=$2; ROUTER_ONLY="$ROUTER_ONLY $1"; shift 2 ;;
    --pattern) PATTERN=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --clear) CLEAR=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
case "$MODE" in
  direct) [ -z "$ROUTER_ONLY" ] || die "--mode direct:$ROUTER_ONLY would drop delete.start" \
            "(a length bound cannot tell it from nova's other INFO messages)" ;;
  router) [ -z "$DIRECT_ONLY" ] || die "--mode router:$DIRECT_ONLY would drop lifecycle" \
            "events silently" ;;
  *) die "--mode must be direct or router, not $MODE" ;;
esac
for n in "$TTL" "$MAXLEN" "$EXPIRES" "$PRIORITY"; do
  case "$n" in ''|*[!0-9]*) die "not a number: $n" ;; esac
done
ctl() { rabbitmqctl -q "$@"; }
if [ -n "$CLEAR" ]; then
  ctl clear_operator_policy -p "$VHOST" "$NAME"
  ctl clear_policy -p "$VHOST" "$NAME-overflow" 2>/dev/null || true
  exit 0
fi
if [ "$MODE" = direct ]; then
  ctl clear_policy -p "$VHOST" "$NAME-overflow" 2>/dev/null || true
  exec rabbitmqctl -q set_operator_policy -p "$VHOST" --apply-to queues "$NAME" "$PATTERN" \
    "{\"message-ttl\": $TTL, \"expires\": $EXPIRES}"
fi
# Only one regular policy applies to a queue: say which others could be replaced or win.
ctl list_policies -p "$VHOST" | tail -n +2 | while IFS="$(printf '\t')" read -r _ other pattern _ \
    definition priority; do
  [ "$other" = "$NAME-overflow" ] && continue
  echo "lifecycle-stats-queue-policy: regular policy $other (pattern $pattern, priority" \
       "$priority, $definition): where it matches the same queues as $PATTERN, only the one" \
       "of higher priority applies ($NAME-overflow has $PRIORITY)" >&2
done
ctl set_policy -p "$VHOST" --apply-to queues --priority "$PRIORITY" "$NAME-overflow" \
  "$PATTERN" '{"overflow": "reject-publish"}'
exec rabbitmqctl -q set_operator_policy -p "$VHOST" --apply-to queues "$NAME" "$PATTERN" \
  "{\"max-length\": $MAXLEN}"
