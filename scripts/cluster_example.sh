#!/usr/bin/env bash
# The README's "Running on a cluster", on one machine: a throwaway PostgreSQL server (SQLite
# when PostgreSQL's server is not installed), a Ray head with token authentication, two
# experiments queued, two workers (one running its run in its own process, one on Ray),
# then `steerlab status`. Everything it starts is stopped and its temporary folder removed
# on exit, even after Ctrl-C or a failure; no other Ray or PostgreSQL on the machine is touched
# (so it stops its own `ray start --block` process group rather than calling `ray stop`,
# which would stop every Ray node of this machine).
source "$(dirname "$0")/env.sh" requirements.txt
STEERLAB="$ROOT/.venv/bin/python -m engine"
RAY="$ROOT/.venv/bin/ray"
WORK="$(mktemp -d /tmp/steerlab-cluster-example-XXXXXX)"
chmod 755 "$WORK"
ray_pid="" pg_ctl=()

cleanup() {
  set +e
  if [ -n "$ray_pid" ]; then
    kill -TERM "$ray_pid" 2>/dev/null && wait "$ray_pid" 2>/dev/null
    kill -KILL -- "-$ray_pid" 2>/dev/null  # stragglers of that node only (its own process group)
  fi
  if [ ${#pg_ctl[@]} -gt 0 ]; then "${pg_ctl[@]}" -m fast -w stop >/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# 1. The store: a PostgreSQL database and role for SteerLab (on a real cluster: your server).
PG_CTL="$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1 || true)"
PG_BIN="$(dirname "$(readlink -f "${PG_CTL:-/none/pg_ctl}")")"  # Debian's versioned folder: initdb, pg_ctl, psql
if [ -x "$PG_BIN/pg_ctl" ]; then
  as_pg=()
  if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$WORK"; fi  # PostgreSQL refuses root
  PG_PORT="$(free_port)"
  "${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg" -U admin -A trust -N >/dev/null
  # Password login for the steerlab role over TCP (read top down: this line first).
  "${as_pg[@]}" sh -c "printf 'host steerlab steerlab 127.0.0.1/32 scram-sha-256\n' | cat - '$WORK/pg/pg_hba.conf' > '$WORK/pg/hba' && mv '$WORK/pg/hba' '$WORK/pg/pg_hba.conf'"
  pg_ctl=("${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg")
  "${pg_ctl[@]}" -o "-h 127.0.0.1 -p $PG_PORT -k $WORK" -l "$WORK/pg.log" -w start >/dev/null
  echo "\$ psql -c \"CREATE ROLE steerlab LOGIN PASSWORD '...'\" && createdb -O steerlab steerlab"
  "${as_pg[@]}" "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U admin -d postgres \
    -c "CREATE ROLE steerlab LOGIN PASSWORD 'example-password'" -c "CREATE DATABASE steerlab OWNER steerlab"
  export STEERLAB_DB="postgresql+psycopg://steerlab:example-password@127.0.0.1:$PG_PORT/steerlab"
else
  echo "PostgreSQL's server is not installed (Debian package postgresql): the example uses a SQLite file."
  export STEERLAB_DB="$WORK/steerlab.db"
fi
echo "STEERLAB_DB=${STEERLAB_DB/example-password/***}"

# 2. The Ray head, with token authentication (a real head: `ray start --head --port 6379
#    --ray-client-server-port 10001`, then `ray start --address HEAD:6379` on each GPU node).
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
RAY_AUTH_TOKEN="$("$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_AUTH_TOKEN
GCS_PORT="$(free_port)" CLIENT_PORT="$(free_port)"
echo "\$ ray start --head --port $GCS_PORT --ray-client-server-port $CLIENT_PORT --num-cpus 2"
setsid "$RAY" start --head --block --port "$GCS_PORT" --ray-client-server-port "$CLIENT_PORT" --num-cpus 2 \
  --include-dashboard=false --temp-dir "$WORK/ray" --disable-usage-stats >"$WORK/ray-start.log" 2>&1 &
ray_pid=$!
for _ in $(seq 1800); do
  grep -q "Ray runtime started" "$WORK/ray-start.log" 2>/dev/null && break
  kill -0 "$ray_pid" 2>/dev/null || { cat "$WORK/ray-start.log"; exit 1; }
  sleep 0.1
done
grep -q "Ray runtime started" "$WORK/ray-start.log" || { echo "ray start --head did not start"; exit 1; }
echo "Ray head up: GCS 127.0.0.1:$GCS_PORT, client ray://127.0.0.1:$CLIENT_PORT"

# 3. Two experiments queued (from any host: the dashboard's Run page does the same).
cd "$WORK"  # each command's log file (steerlab.log for a PostgreSQL store) goes here
for name in tinystories_mood mood_copy; do
  echo "\$ steerlab run experiments/tinystories_mood.yaml --queue --name $name"
  $STEERLAB run "$ROOT/experiments/tinystories_mood.yaml" --queue --name "$name"
done

# 4. Two workers: one runs a run in its own process, the other runs one on the Ray cluster.
echo "\$ steerlab worker --once  &  RAY_ADDRESS=127.0.0.1:$GCS_PORT steerlab worker --once --executor ray --actors 2"
$STEERLAB worker --once >"$WORK/worker-local.log" 2>&1 &
local_worker=$!
RAY_ADDRESS="127.0.0.1:$GCS_PORT" $STEERLAB worker --once --executor ray --actors 2 >"$WORK/worker-ray.log" 2>&1 &
ray_worker=$!
status=0
wait "$local_worker" || status=$?
wait "$ray_worker" || status=$?
for w in local ray; do
  echo "--- worker ($w), its log lines:"
  grep -E "Worker|Run [0-9]+|Joined" "$WORK/worker-$w.log" | grep -v "Warning" | cut -c1-220
done

# 5. Where each run went and how it ended.
for name in tinystories_mood mood_copy; do
  echo "\$ steerlab status $name"
  $STEERLAB status "$name"
done
exit "$status"
