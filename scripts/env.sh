# Defaults for the embedded local stack, shared by scripts/stack, scripts/test and scripts/run.
# Every value can be overridden from the environment.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PULSELINE_STACK_DIR=${PULSELINE_STACK_DIR:-$repo_root/.stack}
export PULSELINE_PG_HOST=${PULSELINE_PG_HOST:-127.0.0.1}
export PULSELINE_PG_PORT=${PULSELINE_PG_PORT:-5432}
export PULSELINE_PG_USER=${PULSELINE_PG_USER:-postgres}
export PULSELINE_PG_DATABASE=${PULSELINE_PG_DATABASE:-pulseline}
export PULSELINE_DATABASE_URL=${PULSELINE_DATABASE_URL:-postgres://$PULSELINE_PG_USER@$PULSELINE_PG_HOST:$PULSELINE_PG_PORT/$PULSELINE_PG_DATABASE}
export PULSELINE_BROKER_PORT=${PULSELINE_BROKER_PORT:-19092}
# The broker the stack's services use: noida (noida-db's Kafka, the default: README "The
# local stack" says why) or tansu (memory storage).
# Each has its own port, so both can run side by side (scripts/test runs the broker-facing
# tests on both); PULSELINE_KAFKA_BOOTSTRAP follows PULSELINE_BROKER unless set.
export PULSELINE_BROKER=${PULSELINE_BROKER:-noida}
export PULSELINE_TANSU_PORT=${PULSELINE_TANSU_PORT:-$PULSELINE_BROKER_PORT}
export PULSELINE_NOIDA_PORT=${PULSELINE_NOIDA_PORT:-29092}
export PULSELINE_TANSU_BOOTSTRAP=${PULSELINE_TANSU_BOOTSTRAP:-127.0.0.1:$PULSELINE_TANSU_PORT}
export PULSELINE_NOIDA_BOOTSTRAP=${PULSELINE_NOIDA_BOOTSTRAP:-127.0.0.1:$PULSELINE_NOIDA_PORT}
# (A bootstrap that names the other broker, e.g. inherited from an earlier `source`, follows
# PULSELINE_BROKER too; any other explicit address is kept.)
case $PULSELINE_BROKER in
tansu)
    [ "${PULSELINE_KAFKA_BOOTSTRAP:-}" != "$PULSELINE_NOIDA_BOOTSTRAP" ] || unset PULSELINE_KAFKA_BOOTSTRAP
    export PULSELINE_KAFKA_BOOTSTRAP=${PULSELINE_KAFKA_BOOTSTRAP:-$PULSELINE_TANSU_BOOTSTRAP} ;;
noida)
    [ "${PULSELINE_KAFKA_BOOTSTRAP:-}" != "$PULSELINE_TANSU_BOOTSTRAP" ] || unset PULSELINE_KAFKA_BOOTSTRAP
    export PULSELINE_KAFKA_BOOTSTRAP=${PULSELINE_KAFKA_BOOTSTRAP:-$PULSELINE_NOIDA_BOOTSTRAP} ;;
*) echo "PULSELINE_BROKER must be tansu or noida, not '$PULSELINE_BROKER'" >&2; return 2 2>/dev/null || exit 2 ;;
esac
export PULSELINE_REGISTRY_PORT=${PULSELINE_REGISTRY_PORT:-18081}
export PULSELINE_SCHEMA_REGISTRY_URL=${PULSELINE_SCHEMA_REGISTRY_URL:-http://127.0.0.1:$PULSELINE_REGISTRY_PORT}
export PULSELINE_TOPIC_PREFIX=${PULSELINE_TOPIC_PREFIX:-}
# The analysts' Parquet export (pulseline-export, pulseline run, pulseline sql, the query API).
export PULSELINE_EXPORT_DIR=${PULSELINE_EXPORT_DIR:-$PULSELINE_STACK_DIR/export}
export PATH="$HOME/.cargo/bin:$PATH"
