#!/usr/bin/env bash
# The servers the shop's tests talk to: PostgreSQL and RabbitMQ from Debian's
# packages, each on kernel-chosen free loopback ports with its own data dir,
# never the system services.
#
#   eval "$(bash services/testenv/testenv.sh up)"   # start; prints export lines
#   bash services/testenv/testenv.sh down           # stop both, remove the dir
#   bash services/testenv/testenv.sh deps           # apt-get install them
#   bash services/testenv/testenv.sh rabbitmqctl …  # against the test broker
#   bash services/testenv/testenv.sh broker-stop    # stop RabbitMQ (every connection
#   bash services/testenv/testenv.sh broker-start   #   closes, none is accepted) and
#                                                   #   start it again, data kept
#
# `up` exports SHOP_TEST_POSTGRES_URL (a superuser URL; each test creates its
# own database), SHOP_TEST_AMQP_URL and SHOP_TESTENV_DIR (logs are in there).
# Postgres refuses to run as root and RabbitMQ's files belong to its own user,
# so as root each runs as the account its package created.
set -euo pipefail

MARKER=.shop-testenv
log() { echo "testenv: $*" >&2; }
die() { log "error: $*"; exit 1; }

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && { echo "$d"; return; }; done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  die "PostgreSQL not found (apt-get install postgresql)"
}
rabbit_bin() {
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || die "RabbitMQ not found (apt-get install rabbitmq-server)"
  echo /usr/lib/rabbitmq/bin
}

# As root, run "$@" as the given system user, environment kept; otherwise as ourselves.
as_user() {
  local user=$1; shift
  if [[ $(id -u) == 0 ]]; then
    setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
  else
    "$@"
  fi
}
own() { [[ $(id -u) == 0 ]] && chown -R "$1:" "$2"; true; }

# Distinct free TCP ports on 127.0.0.1, as the kernel hands them out.
pick_ports() {
  python3 -c '
import socket, sys
held = [socket.create_server(("127.0.0.1", 0)) for _ in range(int(sys.argv[1]))]
print(*(s.getsockname()[1] for s in held))' "$1"
}

wait_for_port() {
  local port=$1 what=$2 tries=${3:-600}
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((tries-- > 0)) || return 1
    sleep 0.1
  done
  log "$what listening on 127.0.0.1:$port"
}

# ------------------------------------------------------------------ postgres
pg_up() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin)
  mkdir -p "$dir/pg"; own postgres "$dir/pg"
  as_user postgres "$bin/initdb" -D "$dir/pg/data" -U shop --auth=trust -E UTF8 --no-locale >"$dir/pg/initdb.log" 2>&1 \
    || { cat "$dir/pg/initdb.log" >&2; die "initdb failed"; }
  # Throwaway data: durability off for speed; the socket stays in our dir.
  as_user postgres "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    >/dev/null || { cat "$dir/pg/server.log" >&2; die "postgres did not start"; }
  log "postgres listening on 127.0.0.1:$port"
}

pg_down() {
  local dir=$1
  [[ -f $dir/pg/data/postmaster.pid ]] || return 0
  as_user postgres "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------ rabbitmq
# Every variable that could point RabbitMQ or Erlang at the system's node,
# files or ports, pointed at ours instead.
rabbit_env() {
  local dir=$1 amqp=$2 dist=$3 epmd=$4
  local r=$dir/rabbit
  echo "HOME=$r/home"
  echo "RABBITMQ_NODENAME=shoptest-$amqp@localhost"
  echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  echo "RABBITMQ_NODE_PORT=$amqp"
  echo "RABBITMQ_DIST_PORT=$dist"
  echo "ERL_EPMD_PORT=$epmd"
  echo "ERL_EPMD_ADDRESS=127.0.0.1"
  echo "RABBITMQ_MNESIA_BASE=$r/mnesia"
  echo "RABBITMQ_LOG_BASE=$r/log"
  echo "RABBITMQ_CONF_ENV_FILE=$r/rabbitmq-env.conf"
  echo "RABBITMQ_CONFIG_FILE=$r/rabbitmq.conf"
  echo "RABBITMQ_ADVANCED_CONFIG_FILE=$r/advanced.config"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$r/enabled_plugins"
  echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_up() {
  local dir=$1 amqp=$2 dist=$3 epmd=$4 bin r=$1/rabbit
  bin=$(rabbit_bin)
  mkdir -p "$r/home" "$r/mnesia" "$r/log"
  : >"$r/rabbitmq-env.conf"
  echo '[].' >"$r/enabled_plugins"
  echo '[].' >"$r/advanced.config"
  cat >"$r/rabbitmq.conf" <<EOF
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
EOF
  rabbit_env "$dir" "$amqp" "$dist" "$epmd" >"$r/env"
  own rabbitmq "$r"
  (
    set -a; while IFS= read -r line; do export "${line?}"; done <"$r/env"; set +a
    cd "$r"
    exec setsid nohup bash -c "$(declare -f as_user); as_user rabbitmq $bin/rabbitmq-server" >"$r/log/startup.log" 2>&1 </dev/null
  ) &
  echo $! >"$r/pid"
  wait_for_port "$amqp" "rabbitmq" 1200 || { tail -n 50 "$r/log/startup.log" >&2; die "rabbitmq did not start"; }
}

# rabbitmqctl against our node (needs SHOP_TESTENV_DIR).
rabbit_ctl() {
  local dir=${SHOP_TESTENV_DIR:-}
  [[ -n $dir && -f $dir/rabbit/env ]] || die "no test broker (set SHOP_TESTENV_DIR)"
  (
    while IFS= read -r line; do export "${line?}"; done <"$dir/rabbit/env"
    cd "$dir/rabbit"
    as_user rabbitmq "$(rabbit_bin)/rabbitmqctl" -q "$@"
  )
}

rabbit_down() {
  local dir=$1 r=$1/rabbit
  [[ -f $r/env ]] || return 0
  (
    while IFS= read -r line; do export "${line?}"; done <"$r/env"
    cd "$r"
    as_user rabbitmq "$(rabbit_bin)/rabbitmqctl" -q stop >/dev/null 2>&1 || true
    if [[ -f $r/pid ]]; then
      local pid; pid=$(cat "$r/pid")
      kill -- "-$pid" 2>/dev/null || true
    fi
    # epmd daemonizes on first use; ours listens on our own port only.
    epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
  )
}

# ------------------------------------------------------------------ commands
cmd_deps() {
  local need=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need+=(rabbitmq-server)
  ((${#need[@]})) || return 0
  bash "$(dirname "${BASH_SOURCE[0]}")/../../.ci/install.sh" "${need[@]}"
}

print_env() {
  local dir=$1
  cat "$dir/exports"
}

cmd_up() {
  local dir pg amqp dist epmd
  dir=$(mktemp -d /tmp/shop-testenv.XXXXXX)
  chmod 755 "$dir"
  touch "$dir/$MARKER"
  read -r pg amqp dist epmd <<<"$(pick_ports 4)"
  pg_up "$dir" "$pg" || { cmd_down "$dir"; exit 1; }
  rabbit_up "$dir" "$amqp" "$dist" "$epmd" || { cmd_down "$dir"; exit 1; }
  cat >"$dir/exports" <<EOF
export SHOP_TESTENV_DIR=$dir
export SHOP_TEST_POSTGRES_URL=postgres://shop@127.0.0.1:$pg/postgres
export SHOP_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$amqp/%2f
EOF
  print_env "$dir"
}

cmd_down() {
  local dir=${1:-${SHOP_TESTENV_DIR:-}}
  [[ -n $dir && -d $dir ]] || die "no testenv dir (set SHOP_TESTENV_DIR)"
  [[ -f $dir/$MARKER ]] || die "$dir was not made by testenv.sh up; not removing it"
  rabbit_down "$dir"
  pg_down "$dir"
  rm -rf "$dir"
  log "stopped, $dir removed"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  deps) cmd_deps ;;
  rabbitmqctl) shift; rabbit_ctl "$@" ;;
  # The node (Erlang VM) stays up; the broker application stops and starts,
  # with its listeners, durable queues and persistent messages kept on disk.
  broker-stop) rabbit_ctl stop_app ;;
  broker-start) rabbit_ctl start_app && rabbit_ctl await_startup ;;
  *) die "usage: $0 up|down [dir]|deps|rabbitmqctl …|broker-stop|broker-start" ;;
esac
