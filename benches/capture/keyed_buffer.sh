#!/usr/bin/env bash
# What generated keyed capture costs writers: no trigger, against the NOTIFY triggers
# `init --keyed` generated before change buffers (a JSON key list NOTIFY per writing
# transaction), against the buffer triggers it generates now (keys into an unlogged
# buffer, NOTIFY only while refreshd holds the channel's lock), with refreshd running on
# the keyed view in both trigger variants. pgbench: single-row INSERT transactions into
# the converted fact table, 8 clients, ROUNDS interleaved rounds of SECS seconds,
# medians. A throwaway cluster (PostgreSQL 15, as the postgres user).
#
#   benches/capture/keyed_buffer.sh [path/to/refreshd] [ROUNDS] [SECS]
#
# The NOTIFY variant's function is the INSERT branch of what generate.rs produced
# before change buffers (commit caed3fa), written out here for this table.
set -euo pipefail
BIN=$(realpath "${1:-target/debug/refreshd}")
ROUNDS=${2:-3}
SECS=${3:-10}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
CLIENTS=8
WORK=$(mktemp -d /tmp/kbbench.XXXXXX)
chown postgres "$WORK"
PORT=$((20000 + RANDOM % 20000))
DATA="$WORK/data"
as_pg() { su postgres -s /bin/bash -c "$*"; }
as_pg "$PGBIN/initdb -D $DATA -A trust -U postgres >/dev/null"
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_connections = 50
synchronous_commit = off
EOF
as_pg "$PGBIN/pg_ctl -D $DATA -l $WORK/log -w start >/dev/null"
DAEMON=
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
    as_pg "$PGBIN/pg_ctl -D $DATA -m immediate stop >/dev/null" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
DSN="postgresql://postgres@/postgres?host=$WORK&port=$PORT"
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }

psql <<'SQL'
CREATE SCHEMA kb;
CREATE TABLE kb.sales (id bigserial PRIMARY KEY, product int NOT NULL, qty int NOT NULL);
INSERT INTO kb.sales (product, qty) SELECT g % 100, 1 + g % 7 FROM generate_series(1, 200000) g;
CREATE MATERIALIZED VIEW kb.by_product AS
  SELECT product, count(*) AS n, sum(qty) AS qty FROM kb.sales GROUP BY product;
CREATE UNIQUE INDEX ON kb.by_product (product);
VACUUM ANALYZE;
SQL
"$BIN" init --url "$DSN" --schema kb --apply --keyed kb.by_product --in-place >"$WORK/init.toml" 2>"$WORK/init.err"
grep -q 'buffer = "refreshd.kb_by_product_consume"' "$WORK/init.toml"
# Only the keyed view's own capture on the fact table.
psql -c "DROP TRIGGER IF EXISTS refreshd_notify ON kb.sales"
psql <<'SQL'
CREATE FUNCTION kb.bench_notify_keys() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payload text;
BEGIN
    WITH d AS (SELECT n."product" FROM new_rows n)
    SELECT CASE WHEN pg_catalog.bool_or(k.k1 IS NULL) THEN '*'
                ELSE '[' || pg_catalog.string_agg('[' || pg_catalog.to_json(k.k1::text)::text || ']', ',') || ']' END
      INTO v_payload
      FROM (SELECT DISTINCT * FROM (SELECT d."product" FROM d) AS u(k1)) AS k;
    IF pg_catalog.octet_length(v_payload) > 7900 THEN
        v_payload := '*';
    END IF;
    IF v_payload IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('refreshd_keys_kb_by_product', v_payload);
    END IF;
    RETURN NULL;
END;
$$;
SQL
TRIGGER=by_product_keys_insert
set_variant() {
    psql -c "DROP TRIGGER IF EXISTS $TRIGGER ON kb.sales"
    case $1 in
    none) ;;
    notify) psql -c "CREATE TRIGGER $TRIGGER AFTER INSERT ON kb.sales REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kb.bench_notify_keys()" ;;
    buffer) psql -c "CREATE TRIGGER $TRIGGER AFTER INSERT ON kb.sales REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION kb.by_product_keys_from_sales()" ;;
    esac
}
config() { # $1: with the buffer key or not
    cat <<EOF
[database]
url = "$DSN"
[http]
listen = "127.0.0.1:0"
[[view]]
name = "kb.by_product"
kind = "keyed"
query = "kb.by_product_def"
key = ["product"]
channels = ["refreshd_keys_kb_by_product"]
debounce = "50ms"
EOF
    [ "$1" = yes ] && echo 'buffer = "refreshd.kb_by_product_consume"'
    true
}
start_daemon() {
    config "$1" >"$WORK/refreshd.toml"
    "$BIN" run -c "$WORK/refreshd.toml" >"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 100); do
        grep -q 'refreshed view=kb.by_product' "$WORK/daemon.log" && return
        sleep 0.1
    done
    echo "refreshd did not refresh at start:" >&2
    cat "$WORK/daemon.log" >&2
    exit 1
}
stop_daemon() { kill "$DAEMON"; wait "$DAEMON" || true; DAEMON=; }
refreshes() { # refreshes the last daemon logged, the startup one included
    [ -f "$WORK/daemon.log" ] && grep -c 'refreshed view=kb.by_product' "$WORK/daemon.log" || echo 0
}
echo '\set p random(0, 99)
INSERT INTO kb.sales (product, qty) VALUES (:p, 1);' >"$WORK/insert.sql"
chmod -R a+r "$WORK"
base=$(psql -Atc "SELECT max(id) FROM kb.sales")
run() { # $1 variant; prints tps
    "$PGBIN/pgbench" -n -c $CLIENTS -j 2 -T "$SECS" -f "$WORK/insert.sql" -d "$DSN" 2>/dev/null |
        awk '/^tps = / { printf "%.0f\n", $3 }'
}
declare -A results
for round in $(seq "$ROUNDS"); do
    for v in none notify buffer; do
        set_variant $v
        case $v in none) ;; notify) start_daemon no ;; buffer) start_daemon yes ;; esac
        tps=$(run $v)
        notes=$(refreshes)
        [ -n "$DAEMON" ] && stop_daemon
        rm -f "$WORK/daemon.log"
        psql -c "DELETE FROM kb.sales WHERE id > $base" -c "VACUUM kb.sales" -c "TRUNCATE refreshd.kb_by_product_keys"
        echo "round $round $v: $tps tps (refreshes logged by refreshd, startup included: $notes)" >&2
        results[$v]+="$tps "
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
none=$(echo "${results[none]}" | median)
printf '| capture on kb.sales | TPS per round | median | ratio to no trigger |\n|---|---|---|---|\n'
for v in none notify buffer; do
    m=$(echo "${results[$v]}" | median)
    label=$v
    case $v in
    none) label="no trigger" ;;
    notify) label="NOTIFY triggers (key list per transaction), refreshd running" ;;
    buffer) label="buffer triggers (keys into refreshd.kb_by_product_keys, NOTIFY only while armed), refreshd running" ;;
    esac
    printf '| %s | %s | %.0f | %.2f |\n' "$label" "${results[$v]}" "$m" "$(echo "$m / $none" | bc -l)"
done
