#!/bin/sh
# RabbitMQ in a container, as the image's non-root user: logs to stdout, a
# node name that does not depend on the pod's hostname, its state in
# /var/lib/rabbitmq/mnesia (a volume in the shop chart). Erlang distribution
# (the CLI tools' way in) listens on loopback only, with a cookie made at the
# first start. The configuration (users, limits) is RABBITMQ_CONFIG_FILE,
# default /etc/rabbitmq/rabbitmq.conf.
set -eu
export HOME=/var/lib/rabbitmq
export RABBITMQ_LOGS=- RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-}"
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
