#!/usr/bin/env bash
# Local development/test stack for fatigue-guard, without Docker:
#   - a real single-node Apache Kafka 4 (KRaft, combined broker+controller) run from the Maven Central
#     jars listed by deploy/local/kafka-pom.xml,
#   - Redis: Debian's redis-server, or an existing one given by FATIGUE_REDIS_URL.
# With --cluster, the cluster profile instead (deploy/local/stack-cluster.sh): 3 Kafka nodes (broker+controller,
# 3-voter quorum, replication factor 3, min.insync.replicas 2) and a Redis Cluster of 3 masters + 3 replicas.
# Both profiles can run at the same time; --cluster commands never touch the single-node stack.
#
# Usage: deploy/local/stack.sh up [--fresh] | down | status | env | reset | logs
#        deploy/local/stack.sh up [--fresh] | down | status | env | reset | logs  --cluster
#   Cluster faults (cluster profile only; --cluster optional):
#        deploy/local/stack.sh kill-broker N     SIGKILL Kafka node N (1-3)
#        deploy/local/stack.sh stop-broker N     stop node N cleanly (SIGTERM: controlled shutdown)
#        deploy/local/stack.sh start-broker N    start node N again on its data; waits until it serves metadata
#        deploy/local/stack.sh kill-redis PORT   SIGKILL the Redis Cluster node on PORT (17001-17006)
#        deploy/local/stack.sh start-redis PORT  start it again on its nodes.conf and AOF; waits for cluster_state:ok
#        deploy/local/stack.sh leader TOPIC [P]  the leader, replicas and ISR of each partition (with P: the leader id)
#
# Environment:
#   FATIGUE_KAFKA_PORT             broker (PLAINTEXT) port            default 19092
#   FATIGUE_KAFKA_CONTROLLER_PORT  KRaft controller port              default 19093
#   FATIGUE_REDIS_PORT             port of the Redis started here     default 16379
#   FATIGUE_REDIS_URL              use this existing Redis instead of starting one
#   FATIGUE_CACHE_DIR              jars, data, logs, pid files        default <repo>/.cache
#   FATIGUE_KAFKA_HEAP_OPTS        broker heap                        default "-Xms256m -Xmx512m"
#   FATIGUE_KAFKA_READY_TIMEOUT    seconds to wait for the broker     default 90
#   FATIGUE_PYTHON                 python3 for the readiness probe (stdlib only)  default python3
# Cluster profile (data, logs and pid files under <cache>/cluster):
#   FATIGUE_CLUSTER_KAFKA_PORT          broker ports N..N+2 (node 1..3)        default 29092
#   FATIGUE_CLUSTER_CONTROLLER_PORT     controller ports N..N+2                default 29192
#   FATIGUE_CLUSTER_REDIS_PORT          Redis ports N..N+5 (bus: +10000)       default 17001
#   FATIGUE_CLUSTER_KAFKA_HEAP_OPTS     heap of each broker                    default "-Xms128m -Xmx320m"
#   FATIGUE_CLUSTER_READY_TIMEOUT       seconds to wait for the brokers        default 180
#   FATIGUE_CLUSTER_REDIS_NODE_TIMEOUT  Redis cluster-node-timeout, ms         default 5000
# `env --cluster` prints FATIGUE_BOOTSTRAP (the three brokers, comma-separated) and FATIGUE_REDIS_URL as
#   redis://127.0.0.1:17001/0?cluster=1&addr=127.0.0.1:17002&...&addr=127.0.0.1:17006 : `cluster=1` means "use
#   a Redis Cluster client", the host and the `addr` parameters are its startup nodes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

HOST=127.0.0.1
KAFKA_PORT=${FATIGUE_KAFKA_PORT:-19092}
CONTROLLER_PORT=${FATIGUE_KAFKA_CONTROLLER_PORT:-19093}
REDIS_PORT=${FATIGUE_REDIS_PORT:-16379}
EXTERNAL_REDIS_URL=${FATIGUE_REDIS_URL:-}
# A shell that ran `eval "$(stack.sh env)"` exports our own URL: that is not an external Redis.
[[ $EXTERNAL_REDIS_URL == "redis://$HOST:$REDIS_PORT/0" ]] && EXTERNAL_REDIS_URL=''
# Nor is the cluster profile's (`env --cluster`: redis://127.0.0.1:PORT/0?cluster=1&...), which a shell switching
# back to this stack still exports.
[[ $EXTERNAL_REDIS_URL == "redis://$HOST:"*"/0?cluster=1"* ]] && EXTERNAL_REDIS_URL=''
# pid files and the broker's command line are compared by absolute path.
CACHE=$(realpath -m "${FATIGUE_CACHE_DIR:-$REPO/.cache}")
read -r -a HEAP_OPTS <<<"${FATIGUE_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
READY_TIMEOUT=${FATIGUE_KAFKA_READY_TIMEOUT:-90}
PYTHON=${FATIGUE_PYTHON:-python3}

POM=$HERE/kafka-pom.xml
KDIR=$CACHE/kafka
LIBS=$KDIR/libs
KCONF_DIR=$KDIR/config
KCONF=$KCONF_DIR/server.properties
KLOG4J=$KCONF_DIR/log4j2.properties
KDATA=$KDIR/data
KLOGS=$KDIR/logs
KPID=$KDIR/kafka.pid
RDIR=$CACHE/redis
RPID=$RDIR/redis.pid
RLOG=$RDIR/redis.log

JAVA=java
[[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/java ]] && JAVA=$JAVA_HOME/bin/java

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

[[ $KAFKA_PORT =~ ^[0-9]+$ ]] || die "FATIGUE_KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
[[ $CONTROLLER_PORT =~ ^[0-9]+$ ]] || die "FATIGUE_KAFKA_CONTROLLER_PORT must be a port number, got '$CONTROLLER_PORT'"
[[ $REDIS_PORT =~ ^[0-9]+$ ]] || die "FATIGUE_REDIS_PORT must be a port number, got '$REDIS_PORT'"
[[ $READY_TIMEOUT =~ ^[0-9]+$ ]] || die "FATIGUE_KAFKA_READY_TIMEOUT must be a number of seconds, got '$READY_TIMEOUT'"
[[ $KAFKA_PORT != "$CONTROLLER_PORT" ]] || die "FATIGUE_KAFKA_PORT and FATIGUE_KAFKA_CONTROLLER_PORT must differ"

redis_url() {
    if [[ -n $EXTERNAL_REDIS_URL ]]; then
        printf '%s' "$EXTERNAL_REDIS_URL"
    else
        printf 'redis://%s:%s/0' "$HOST" "$REDIS_PORT"
    fi
}

# --- processes ---------------------------------------------------------------------------------

cmdline_of() {
    if [[ -r /proc/$1/cmdline ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -o args= -p "$1" 2>/dev/null || true
    fi
}

# Prints the pid recorded in pid file $1 if that process is alive and its command line contains $2.
# A pid file alone is not trusted: after a reboot the pid may belong to an unrelated process.
our_pid() {
    local pidfile=$1 needle=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(cmdline_of "$pid") == *"$needle"* ]] || return 1
    printf '%s' "$pid"
}

# A pid from `setsid CMD &` names the forked shell until it has exec'd CMD; until then our_pid would call the
# process "not ours", and a caller would take a broker that is still starting for one that exited.
await_exec() {
    local pid=$1 needle=$2 waited=0
    while kill -0 "$pid" 2>/dev/null && [[ $(cmdline_of "$pid") != *"$needle"* ]]; do
        ((waited >= 100)) && return 0
        sleep 0.05
        waited=$((waited + 1))
    done
}

kafka_pid() { our_pid "$KPID" "kafka.Kafka $KCONF"; }
redis_pid() { our_pid "$RPID" "redis-server"; }

# TERM, wait up to $3 seconds, then KILL. Only ever called with a pid from our_pid.
stop_pid() {
    local name=$1 pid=$2 grace=$3 waited=0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= grace * 10)); then
            log "$name did not exit within ${grace}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

port_owner() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n1
    fi
}

# $3: the settings that move the ports, named in the error.
require_free_port() {
    local port=$1 what=$2 settings=${3:-FATIGUE_KAFKA_PORT / FATIGUE_KAFKA_CONTROLLER_PORT / FATIGUE_REDIS_PORT} owner
    if port_open "$port"; then
        owner=$(port_owner "$port")
        die "port $port ($what) is already in use by a process that this stack did not start${owner:+ ($owner)}." \
            "Stop it, or choose other ports, e.g. $settings."
    fi
}

# --- prerequisites -----------------------------------------------------------------------------

require_java() {
    command -v "$JAVA" >/dev/null 2>&1 ||
        die "java not found: Kafka 4 needs a Java 17+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless), or set JAVA_HOME."
    local spec major
    spec=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)
    major=${spec#1.}
    major=${major%%.*}
    [[ $major =~ ^[0-9]+$ ]] || die "could not determine the Java version of '$JAVA'"
    ((major >= 17)) || die "Kafka 4 needs Java 17 or newer; '$JAVA' is Java $spec. Install openjdk-17 or set JAVA_HOME."
}

require_mvn() {
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: Maven 3.6+ is needed once to fetch the Kafka jars from Maven Central (Debian/Ubuntu: apt-get install maven)."
}

ensure_redis_server() {
    command -v redis-server >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "redis-server not found and apt-get is unavailable: install Redis 6.2+ or set FATIGUE_REDIS_URL to an existing Redis."
    local -a sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "redis-server not found: install it (apt-get install redis-server) or set FATIGUE_REDIS_URL."
        sudo=(sudo)
    fi
    log "redis-server not found, installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        ${sudo[@]+"${sudo[@]}"} apt-get update -q
    fi
    if ! ${sudo[@]+"${sudo[@]}"} apt-get install -y -q redis-server; then
        ${sudo[@]+"${sudo[@]}"} apt-get update -q
        ${sudo[@]+"${sudo[@]}"} apt-get install -y -q redis-server
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server is still missing after apt-get install"
}

# --- Kafka -------------------------------------------------------------------------------------

# The marker holds a hash of the pom, so editing the pom (e.g. a Kafka upgrade) re-resolves the jars.
resolve_kafka_jars() {
    local want have='' tmp start
    want=$(sha256sum "$POM" | cut -d' ' -f1)
    [[ -f $LIBS/.resolved ]] && have=$(<"$LIBS/.resolved")
    [[ $want == "$have" ]] && return 0
    require_mvn
    log "resolving Kafka jars from Maven Central into $LIBS (first run only)"
    start=$SECONDS
    tmp=$KDIR/libs.tmp.$$
    rm -rf "$tmp"
    mkdir -p "$KDIR"
    # Into a temporary folder first: an interrupted download must not leave a half classpath behind.
    # Output goes to a file because Debian's Maven 3.8 prints stray ANSI codes even in batch mode.
    if ! mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$KDIR/maven.log" 2>&1 9>&-; then
        rm -rf "$tmp"
        tail -n 40 "$KDIR/maven.log" >&2
        die "Maven could not resolve the Kafka jars (output above, full log $KDIR/maven.log); Maven Central must be reachable"
    fi
    printf '%s\n' "$want" >"$tmp/.resolved"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    log "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - start))s"
}

write_kafka_config() {
    mkdir -p "$KCONF_DIR" "$KDATA" "$KLOGS"
    cat >"$KCONF" <<EOF
# Generated by deploy/local/stack.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KDATA

num.partitions=1
default.replication.factor=1
# Topics are created explicitly with their partition counts: a metadata request (describe, a producer)
# must never create a one-partition input topic that the state table could not be co-partitioned with.
auto.create.topics.enable=false
delete.topic.enable=true
# Single node: internal topics cannot have more than one replica. Fewer partitions than the
# default 50 make the first consumer group / transaction in a fresh cluster noticeably faster.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=8
min.insync.replicas=1
group.initial.rebalance.delay.ms=0

# Compacted topics are part of the product (decision topic): keep the cleaner on. Its dedupe
# buffer lives on the heap (default 128 MiB), too much for the small heap used here.
log.cleaner.enable=true
log.cleaner.dedupe.buffer.size=33554432
num.recovery.threads.per.data.dir=1
EOF
    cat >"$KLOG4J" <<EOF
# Generated by deploy/local/stack.sh. Quiet by design: warnings and errors only, plus the
# one "Kafka Server started" line so the log shows each (re)start.
status = warn
name = fatigue-local-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $KLOGS/server.log
appender.file.filePattern = $KLOGS/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
EOF
}

java_cmd() {
    "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$KLOG4J" "$@"
}

# KRaft cluster ids are 16 random bytes in URL-safe base64 without padding. A leading '-' would be
# parsed as an option by the storage tool.
random_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id == -* ]] || break
    done
    printf '%s' "$id"
}

# Once per data dir. Changing the ports later is fine: the single voter updates its own endpoint
# in the quorum (KIP-853) when it starts with a new controller listener.
format_kafka_storage() {
    [[ -f $KDATA/meta.properties ]] && return 0
    log "formatting Kafka storage in $KDATA"
    java_cmd kafka.tools.StorageTool format -t "$(random_cluster_id)" -c "$KCONF" \
        --standalone --ignore-formatted >"$KLOGS/format.out" 2>&1 9>&- ||
        {
            cat "$KLOGS/format.out" >&2
            die "formatting Kafka storage failed"
        }
}

start_kafka() {
    local pid
    log "starting Kafka $(kafka_version) on $HOST:$KAFKA_PORT (controller $HOST:$CONTROLLER_PORT)"
    printf '%s at %s ----\n' "$START_MARK" "$(date '+%F %T')" >>"$KLOGS/server.log"
    # setsid: the broker must outlive the calling shell and ignore Ctrl-C aimed at a later foreground
    # command (e.g. `make run`). fd 9 is the stack lock, which the broker must not keep holding.
    setsid "$JAVA" "${HEAP_OPTS[@]}" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KLOG4J" -Dkafka.logs.dir="$KLOGS" \
        -cp "$LIBS/*" kafka.Kafka "$KCONF" \
        </dev/null >"$KLOGS/kafka.out" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$KPID"
    await_exec "$pid" "kafka.Kafka $KCONF"
}

kafka_version() {
    local jar
    jar=$(find "$LIBS" -maxdepth 1 -name 'kafka_2.13-*.jar' 2>/dev/null | head -n1)
    jar=${jar##*/kafka_2.13-}
    printf '%s' "${jar%.jar}"
}

# One real Metadata round trip against the broker; the error of the last attempt is kept for reports.
kafka_answers() {
    port_open "$KAFKA_PORT" || {
        echo "port $KAFKA_PORT is not accepting connections" >"$KLOGS/probe.err"
        return 1
    }
    timeout 20 "$PYTHON" "$HERE/kafka_probe.py" "$HOST:$KAFKA_PORT" >/dev/null 2>"$KLOGS/probe.err" 9>&-
}

require_python() {
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "'$PYTHON' not found: the Kafka readiness probe needs python3 (standard library only); set FATIGUE_PYTHON to use another."
}

START_MARK='---- deploy/local/stack.sh: starting the broker'

# server.log spans all starts: show only what the latest start wrote.
print_kafka_failure_logs() {
    local f from
    for f in "$KLOGS/probe.err" "$KLOGS/kafka.out" "$KLOGS/server.log"; do
        [[ -s $f ]] || continue
        from=$(grep -n -F -- "$START_MARK" "$f" | tail -n 1 | cut -d: -f1) || true
        printf '[stack] ---- last lines of %s ----\n' "$f" >&2
        tail -n +"${from:-1}" "$f" | tail -n 40 >&2 || true
    done
}

wait_kafka_ready() {
    local pid=$1 deadline=$((SECONDS + READY_TIMEOUT)) start=$SECONDS
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            print_kafka_failure_logs
            rm -f "$KPID"
            die "the Kafka broker exited during startup (logs above)"
        fi
        if kafka_answers; then
            log "Kafka answers metadata requests on $HOST:$KAFKA_PORT (ready after $((SECONDS - start))s)"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            print_kafka_failure_logs
            stop_pid kafka "$pid" 30
            rm -f "$KPID"
            die "Kafka did not answer on $HOST:$KAFKA_PORT within ${READY_TIMEOUT}s (logs above); it was stopped"
        fi
        sleep 0.25
    done
}

# --- Redis -------------------------------------------------------------------------------------

redis_ping_url() {
    local url=$1
    if command -v redis-cli >/dev/null 2>&1; then
        [[ $(timeout 5 redis-cli -u "$url" ping 2>/dev/null) == PONG ]]
    else
        local py=$REPO/.venv/bin/python
        [[ -x $py ]] || die "cannot check $url: neither redis-cli nor $py (run 'make venv') is available"
        timeout 5 "$py" -c 'import sys, redis; sys.exit(0 if redis.Redis.from_url(sys.argv[1]).ping() else 1)' \
            "$url" >/dev/null 2>&1
    fi
}

redis_answers() { redis_ping_url "$(redis_url)"; }

start_redis() {
    local deadline
    mkdir -p "$RDIR"
    log "starting redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') on $HOST:$REDIS_PORT"
    rm -f "$RPID"
    # A throwaway cache for tests and development: no RDB snapshots, no AOF.
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
        --pidfile "$RPID" --logfile "$RLOG" --dir "$RDIR" --save '' --appendonly no 9>&- ||
        die "redis-server failed to start (see $RLOG)"
    deadline=$((SECONDS + 15))
    until redis_pid >/dev/null && redis_answers; do
        if ((SECONDS >= deadline)); then
            [[ -s $RLOG ]] && tail -n 20 "$RLOG" >&2
            die "Redis did not answer PING on $HOST:$REDIS_PORT within 15s"
        fi
        sleep 0.1
    done
}

# --- commands ----------------------------------------------------------------------------------

take_lock() {
    mkdir -p "$CACHE"
    # Serialises concurrent up/down (e.g. two terminals, make -j); readers (status/env) need no lock.
    exec 9>"$CACHE/.stack.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 600 9 || die "another deploy/local/stack.sh is still running (lock $CACHE/.stack.lock)"
    fi
}

wipe_kafka_data() {
    log "wiping local Kafka data ($KDATA)"
    rm -rf "$KDATA"
}

cmd_up() {
    local fresh=0 arg kpid='' need_kafka=1 need_redis=1
    for arg in "$@"; do
        case $arg in
        --fresh) fresh=1 ;;
        *) die "unknown option for up: $arg" ;;
        esac
    done
    take_lock
    if ((fresh)); then
        if kpid=$(kafka_pid); then stop_pid kafka "$kpid" 60; fi
        rm -f "$KPID"
        wipe_kafka_data
    fi

    if kpid=$(kafka_pid); then
        need_kafka=0
    else
        kpid=''
    fi
    if [[ -n $EXTERNAL_REDIS_URL ]] || redis_pid >/dev/null; then need_redis=0; fi

    # Fail on foreign port owners before any download or process start.
    if ((need_kafka)); then
        require_free_port "$KAFKA_PORT" "Kafka broker, FATIGUE_KAFKA_PORT"
        require_free_port "$CONTROLLER_PORT" "Kafka controller, FATIGUE_KAFKA_CONTROLLER_PORT"
    fi
    ((need_redis)) && require_free_port "$REDIS_PORT" "Redis, FATIGUE_REDIS_PORT"

    if [[ -n $EXTERNAL_REDIS_URL ]]; then
        redis_answers || die "FATIGUE_REDIS_URL=$EXTERNAL_REDIS_URL does not answer PING"
        log "using the existing Redis at FATIGUE_REDIS_URL=$EXTERNAL_REDIS_URL"
    fi
    if ((need_kafka)); then
        require_python
        require_java
        resolve_kafka_jars
    fi
    ((need_redis)) && ensure_redis_server

    if ((need_kafka)); then
        write_kafka_config
        format_kafka_storage
        start_kafka
        kpid=$(<"$KPID")
    fi
    # Redis starts while the JVM boots.
    if ((need_redis)); then
        start_redis
    elif [[ -z $EXTERNAL_REDIS_URL ]]; then
        redis_answers || die "our Redis (pid $(redis_pid)) does not answer on $HOST:$REDIS_PORT; was it started with another FATIGUE_REDIS_PORT? Run '$0 down' first."
    fi

    if ((need_kafka)); then
        wait_kafka_ready "$kpid"
    elif kafka_answers; then
        log "Kafka already running (pid $kpid) and answering on $HOST:$KAFKA_PORT"
    else
        # Possibly still booting from an earlier `up`, or started with other ports.
        log "Kafka (pid $kpid) is running but not answering on $HOST:$KAFKA_PORT yet; waiting"
        wait_kafka_ready "$kpid"
    fi
    if ((need_kafka == 0 && need_redis == 0)); then
        log "stack already up"
    else
        log "stack up"
    fi
    log "use it with: eval \"\$($0 env)\""
}

cmd_down() {
    local pid
    take_lock
    if pid=$(kafka_pid); then
        stop_pid kafka "$pid" 60
    else
        log "kafka: not running (nothing of ours to stop)"
    fi
    rm -f "$KPID"
    if pid=$(redis_pid); then
        stop_pid redis "$pid" 15
    else
        log "redis: not running (nothing of ours to stop)"
    fi
    rm -f "$RPID"
}

cmd_status() {
    local pid ok=0
    if pid=$(kafka_pid); then
        if kafka_answers; then
            echo "kafka: running (pid $pid), answering on $HOST:$KAFKA_PORT"
        else
            echo "kafka: running (pid $pid), NOT answering on $HOST:$KAFKA_PORT: $(head -c 300 "$KLOGS/probe.err" 2>/dev/null)"
            ok=1
        fi
    else
        if port_open "$KAFKA_PORT"; then
            echo "kafka: not running (port $KAFKA_PORT is used by another process)"
        else
            echo "kafka: not running"
        fi
        ok=1
    fi
    if [[ -n $EXTERNAL_REDIS_URL ]]; then
        if redis_answers; then
            echo "redis: external FATIGUE_REDIS_URL=$EXTERNAL_REDIS_URL, answering"
        else
            echo "redis: external FATIGUE_REDIS_URL=$EXTERNAL_REDIS_URL, NOT answering"
            ok=1
        fi
    elif pid=$(redis_pid); then
        if redis_answers; then
            echo "redis: running (pid $pid), answering on $HOST:$REDIS_PORT"
        else
            echo "redis: running (pid $pid), NOT answering on $HOST:$REDIS_PORT"
            ok=1
        fi
    else
        if port_open "$REDIS_PORT"; then
            echo "redis: not running (port $REDIS_PORT is used by another process)"
        else
            echo "redis: not running"
        fi
        ok=1
    fi
    return "$ok"
}

cmd_env() {
    printf 'export FATIGUE_BOOTSTRAP=%q\n' "$HOST:$KAFKA_PORT"
    printf 'export FATIGUE_REDIS_URL=%q\n' "$(redis_url)"
}

cmd_reset() {
    cmd_down
    wipe_kafka_data
    rm -rf "$RDIR"
}

cmd_logs() {
    local f
    for f in "$KLOGS/server.log" "$KLOGS/kafka.out" "$RLOG"; do
        [[ -s $f ]] || continue
        printf '==> %s <==\n' "$f"
        tail -n 50 "$f"
    done
}

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

main() {
    local cmd='' cluster=0 arg
    local -a args=()
    # --cluster may stand anywhere; the first other word is the command.
    for arg in "$@"; do
        if [[ $arg == --cluster ]]; then
            cluster=1
        elif [[ -z $cmd ]]; then
            cmd=$arg
        else
            args+=("$arg")
        fi
    done
    case $cmd in
    kill-broker | stop-broker | start-broker | kill-redis | start-redis | leader) cluster=1 ;;
    esac
    if ((cluster)); then
        case $cmd in
        -h | --help | help) usage ;;
        "")
            usage >&2
            exit 2
            ;;
        *)
            # shellcheck source=stack-cluster.sh source-path=SCRIPTDIR
            source "$HERE/stack-cluster.sh"
            cl_main "$cmd" ${args[@]+"${args[@]}"}
            ;;
        esac
        return
    fi
    case $cmd in
    up) cmd_up ${args[@]+"${args[@]}"} ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    reset) cmd_reset ;;
    logs) cmd_logs ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
