# shellcheck shell=bash
# The cluster profile of deploy/local/stack.sh (`stack.sh COMMAND --cluster`): sourced by stack.sh, which
# provides log/die, our_pid, stop_pid, port checks, the Java/Maven/Redis prerequisites and the Kafka jars.
#
#   - Kafka: 3 KRaft nodes, each broker AND controller (combined roles), a static 3-voter controller quorum.
#     Combined rather than dedicated controllers: 3 JVMs instead of 4-6 start faster and need less memory on a
#     2-core machine, and the quorum still survives the loss of any one node, so killing a broker also
#     exercises a controller failover, as it does on small production clusters. Static voters
#     (controller.quorum.voters) rather than a dynamic quorum: every node is formatted alike, no
#     --initial-controllers directory ids to carry around.
#     Internal topics and the default for new topics: 3 replicas, min.insync.replicas 2.
#   - Redis Cluster: 6 redis-server processes, 3 masters with 1 replica each, AOF on (appendfsync everysec), so
#     a node killed and restarted comes back with its data instead of as an empty master that its replica
#     would then copy; cluster-node-timeout 5 s (the default 15 s makes failover tests slow).
#
# Everything lives under $CACHE/cluster (git-ignored); locks are separate from the single-node stack's, so
# both profiles can be started, stopped and used at the same time.

CL_KAFKA_PORT=${FATIGUE_CLUSTER_KAFKA_PORT:-29092}
CL_CONTROLLER_PORT=${FATIGUE_CLUSTER_CONTROLLER_PORT:-29192}
CL_REDIS_PORT=${FATIGUE_CLUSTER_REDIS_PORT:-17001}
# Small heaps: three JVMs share a 2-core machine with other work. Measured there: an idle broker uses 40-60 MiB
# of heap (128-150 MiB committed) and has an RSS of 200-260 MB (metaspace, code cache, threads, buffers);
# the 320 MiB ceiling leaves room for the log cleaner's 16 MiB buffer and bursts of produce requests.
read -r -a CL_HEAP_OPTS <<<"${FATIGUE_CLUSTER_KAFKA_HEAP_OPTS:--Xms128m -Xmx320m}"
CL_READY_TIMEOUT=${FATIGUE_CLUSTER_READY_TIMEOUT:-180}
CL_REDIS_NODE_TIMEOUT=${FATIGUE_CLUSTER_REDIS_NODE_TIMEOUT:-5000}

CL_NODES=(1 2 3)
CL_PORT_SETTINGS='FATIGUE_CLUSTER_KAFKA_PORT / FATIGUE_CLUSTER_CONTROLLER_PORT / FATIGUE_CLUSTER_REDIS_PORT'
CL_DIR=$CACHE/cluster
CL_REDIS_MARKER=$CL_DIR/redis-cluster.created
CL_ID_FILE=$CL_DIR/kafka-cluster.id

# NAME:VARIABLE:HIGHEST: each setting starts a range of consecutive ports (Redis also uses port + 10000).
for _spec in CL_KAFKA_PORT:FATIGUE_CLUSTER_KAFKA_PORT:65533 CL_CONTROLLER_PORT:FATIGUE_CLUSTER_CONTROLLER_PORT:65533 \
    CL_REDIS_PORT:FATIGUE_CLUSTER_REDIS_PORT:55530; do
    IFS=: read -r _name _variable _highest <<<"$_spec"
    _value=${!_name}
    if ! [[ $_value =~ ^[0-9]+$ ]] || ((_value < 1 || _value > _highest)); then
        die "$_variable must be a port number from 1 to $_highest (the first of consecutive ports), got '$_value'"
    fi
done
unset _spec _name _variable _highest _value
[[ $CL_READY_TIMEOUT =~ ^[0-9]+$ ]] ||
    die "FATIGUE_CLUSTER_READY_TIMEOUT must be a number of seconds, got '$CL_READY_TIMEOUT'"
[[ $CL_REDIS_NODE_TIMEOUT =~ ^[0-9]+$ ]] ||
    die "FATIGUE_CLUSTER_REDIS_NODE_TIMEOUT must be a number of milliseconds, got '$CL_REDIS_NODE_TIMEOUT'"
((CL_KAFKA_PORT + 2 < CL_CONTROLLER_PORT || CL_CONTROLLER_PORT + 2 < CL_KAFKA_PORT)) ||
    die "the broker ports ($CL_KAFKA_PORT-$((CL_KAFKA_PORT + 2))) and controller ports ($CL_CONTROLLER_PORT-$((CL_CONTROLLER_PORT + 2))) overlap"

# --- names and addresses -----------------------------------------------------------------------

cl_kport() { printf '%s' $((CL_KAFKA_PORT + $1 - 1)); }
cl_cport() { printf '%s' $((CL_CONTROLLER_PORT + $1 - 1)); }
cl_ndir() { printf '%s' "$CL_DIR/kafka-$1"; }
cl_kconf() { printf '%s' "$CL_DIR/kafka-$1/config/server.properties"; }
cl_klog() { printf '%s' "$CL_DIR/kafka-$1/logs/server.log"; }
cl_kpid() { our_pid "$(cl_ndir "$1")/kafka.pid" "kafka.Kafka $(cl_kconf "$1")"; }
cl_kname() { printf 'kafka-%s (node %s, broker %s:%s, controller %s:%s)' "$1" "$1" "$HOST" "$(cl_kport "$1")" \
    "$HOST" "$(cl_cport "$1")"; }

cl_redis_ports() {
    local i
    for i in 0 1 2 3 4 5; do printf '%s\n' $((CL_REDIS_PORT + i)); done
}
cl_rdir() { printf '%s' "$CL_DIR/redis-$1"; }
cl_rlog() { printf '%s' "$CL_DIR/redis-$1/redis.log"; }
# Redis rewrites its process title to "redis-server 127.0.0.1:PORT [cluster]".
cl_rpid() { our_pid "$(cl_rdir "$1")/redis.pid" "redis-server $HOST:$1"; }

cl_bootstrap() {
    local n out=''
    for n in "${CL_NODES[@]}"; do out+=${out:+,}$HOST:$(cl_kport "$n"); done
    printf '%s' "$out"
}

cl_voters() {
    local n out=''
    for n in "${CL_NODES[@]}"; do out+=${out:+,}$n@$HOST:$(cl_cport "$n"); done
    printf '%s' "$out"
}

# One seed node in the address, the others as `addr` parameters (as go-redis' ParseClusterURL reads them), so a
# client can still bootstrap while any one node is down; `cluster=1` says: use a Redis Cluster client. A plain
# redis.Redis.from_url() refuses the unknown `cluster` argument instead of half-working against one shard.
cl_redis_url() {
    local port first='' extra=''
    for port in $(cl_redis_ports); do
        if [[ -z $first ]]; then
            first=$port
        else
            extra+="&addr=$HOST:$port"
        fi
    done
    printf 'redis://%s:%s/0?cluster=1%s' "$HOST" "$first" "$extra"
}

require_valid_node() {
    [[ ${1:-} =~ ^[123]$ ]] || die "expected a Kafka node id of the cluster profile (1, 2 or 3), got '${1:-}'"
}

require_valid_redis_port() {
    local port
    for port in $(cl_redis_ports); do [[ ${1:-} == "$port" ]] && return 0; done
    die "expected a Redis port of the cluster profile ($(cl_redis_ports | paste -sd' ')), got '${1:-}'"
}

cl_take_lock() {
    mkdir -p "$CACHE" "$CL_DIR"
    # Its own lock: the single-node stack's `up` may hold .stack.lock for a minute; neither waits for the other.
    exec 9>"$CACHE/.cluster.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 600 9 || die "another deploy/local/stack.sh --cluster is still running (lock $CACHE/.cluster.lock)"
    fi
}

# The jars are shared with the single-node stack: resolve them (rarely: first run, or the pom changed) under
# its lock, so the two profiles never replace the folder at the same time.
cl_resolve_kafka_jars() {
    local want have=''
    want=$(sha256sum "$POM" | cut -d' ' -f1)
    [[ -f $LIBS/.resolved ]] && have=$(<"$LIBS/.resolved")
    [[ $want == "$have" ]] && return 0
    exec 8>"$CACHE/.stack.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 600 8 || die "the single-node stack holds $CACHE/.stack.lock for too long; retry"
    fi
    resolve_kafka_jars
    exec 8>&-
}

# --- Kafka -------------------------------------------------------------------------------------

cl_write_kafka_config() {
    local n=$1 dir conf
    dir=$(cl_ndir "$n")
    conf=$(cl_kconf "$n")
    mkdir -p "$dir/config" "$dir/data" "$dir/logs"
    cat >"$conf" <<EOF
# Generated by deploy/local/stack.sh (cluster profile) on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(cl_voters)
listeners=PLAINTEXT://$HOST:$(cl_kport "$n"),CONTROLLER://$HOST:$(cl_cport "$n")
advertised.listeners=PLAINTEXT://$HOST:$(cl_kport "$n"),CONTROLLER://$HOST:$(cl_cport "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

num.partitions=1
default.replication.factor=3
auto.create.topics.enable=false
delete.topic.enable=true
# Replicated like a production cluster: an acknowledged (acks=all) write survives the loss of one broker.
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
share.coordinator.state.topic.num.partitions=8
min.insync.replicas=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# Failure detection stays at Kafka's defaults (broker.session.timeout.ms 9 s, replica.lag.time.max.ms 30 s):
# fault tests should see what a real cluster does.

# Three JVMs on two cores: fewer threads than the defaults (8 I/O, 3 network, 10 background).
num.io.threads=4
num.network.threads=2
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.enable=true
log.cleaner.dedupe.buffer.size=16777216
EOF
    cat >"$dir/config/log4j2.properties" <<EOF
# Generated by deploy/local/stack.sh (cluster profile): warnings and errors, plus the start line.
status = warn
name = fatigue-cluster-kafka-$n
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $dir/logs/server.log
appender.file.filePattern = $dir/logs/server.log.%i
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

# All nodes share one cluster id, kept in $CL_ID_FILE (or read back from a node already formatted).
cl_cluster_id() {
    local n meta id=''
    if [[ -s $CL_ID_FILE ]]; then
        id=$(<"$CL_ID_FILE")
    else
        for n in "${CL_NODES[@]}"; do
            meta=$(cl_ndir "$n")/data/meta.properties
            [[ -f $meta ]] && id=$(sed -n 's/^cluster\.id=//p' "$meta") && [[ -n $id ]] && break
        done
        [[ -n $id ]] || id=$(random_cluster_id)
        printf '%s\n' "$id" >"$CL_ID_FILE"
    fi
    printf '%s' "$id"
}

# Formats the nodes not formatted yet, in parallel (one JVM each).
cl_format_storage() {
    local n i id dir failed=0
    local -a pids=() formatted=()
    id=$(cl_cluster_id)
    for n in "${CL_NODES[@]}"; do
        dir=$(cl_ndir "$n")
        [[ -f $dir/data/meta.properties ]] && continue
        formatted+=("$n")
        "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$dir/config/log4j2.properties" \
            kafka.tools.StorageTool format -t "$id" -c "$(cl_kconf "$n")" --ignore-formatted \
            >"$dir/logs/format.out" 2>&1 9>&- &
        pids+=($!)
    done
    ((${#formatted[@]})) || return 0
    log "formatting Kafka storage of node(s) ${formatted[*]} (cluster id $id)"
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            n=${formatted[$i]}
            cat "$(cl_ndir "$n")/logs/format.out" >&2
            log "formatting the storage of $(cl_kname "$n") failed (output above)"
            failed=1
        fi
    done
    ((failed == 0)) || die "formatting Kafka storage failed"
}

cl_start_kafka_node() {
    local n=$1 dir
    dir=$(cl_ndir "$n")
    cl_write_kafka_config "$n"
    log "starting $(cl_kname "$n")"
    printf '%s at %s ----\n' "$START_MARK" "$(date '+%F %T')" >>"$dir/logs/server.log"
    printf '%s at %s ----\n' "$START_MARK" "$(date '+%F %T')" >"$dir/logs/kafka.out"
    rm -f "$dir/logs/probe.err"
    setsid "$JAVA" "${CL_HEAP_OPTS[@]}" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/config/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
        -cp "$LIBS/*" kafka.Kafka "$(cl_kconf "$n")" \
        </dev/null >>"$dir/logs/kafka.out" 2>&1 8>&- 9>&- &
    printf '%s\n' "$!" >"$dir/kafka.pid"
    await_exec "$!" "kafka.Kafka $(cl_kconf "$n")"
}

# Node $1 answers a Metadata request on its own port listing itself (registered and unfenced) and at least
# $2 brokers. The probe's last error is kept in the node's logs/probe.err.
cl_kafka_node_answers() {
    local n=$1 want=${2:-3} dir out
    dir=$(cl_ndir "$n")
    if ! port_open "$(cl_kport "$n")"; then
        echo "port $(cl_kport "$n") is not accepting connections" >"$dir/logs/probe.err"
        return 1
    fi
    out=$(timeout 20 "$PYTHON" "$HERE/kafka_probe.py" "$HOST:$(cl_kport "$n")" --min-brokers "$want" \
        2>"$dir/logs/probe.err" 8>&- 9>&-) || return 1
    if [[ ,${out#brokers=} != *",$n@"* ]]; then
        echo "metadata does not list node $n itself yet: $out" >"$dir/logs/probe.err"
        return 1
    fi
}

cl_quorum() {
    timeout 20 "$PYTHON" "$HERE/kafka_probe.py" "$(cl_bootstrap)" --quorum 2>"$CL_DIR/quorum.err" 8>&- 9>&-
}

cl_print_node_failure_logs() {
    local n=$1 dir f from
    dir=$(cl_ndir "$n")
    for f in "$dir/logs/probe.err" "$dir/logs/kafka.out" "$dir/logs/server.log"; do
        [[ -s $f ]] || continue
        from=$(grep -n -F -- "$START_MARK" "$f" | tail -n 1 | cut -d: -f1) || true
        printf '[stack] ---- last lines of %s ----\n' "$f" >&2
        tail -n +"${from:-1}" "$f" | tail -n 30 >&2 || true
    done
}

# Waits until every node in $@ answers metadata listing all three brokers and the quorum has a leader.
# On failure, stops the nodes listed in CL_STARTED (those this command started) and names the culprit.
CL_STARTED=()
cl_stop_started() {
    local n pid
    local -a pairs=()
    for n in ${CL_STARTED[@]+"${CL_STARTED[@]}"}; do
        pid=$(cl_kpid "$n") && pairs+=("kafka-$n" "$pid")
    done
    ((${#pairs[@]})) && stop_pids 60 "${pairs[@]}"
    for n in ${CL_STARTED[@]+"${CL_STARTED[@]}"}; do rm -f "$(cl_ndir "$n")/kafka.pid"; done
    if ((${#pairs[@]})); then log "stopped the Kafka node(s) this command started: ${CL_STARTED[*]}"; fi
}

# For failures after the JVMs were started: they would otherwise keep running (and using memory) unnoticed.
cl_die() {
    cl_stop_started
    die "$@"
}

cl_wait_kafka_ready() {
    local timeout=$1 n start=$SECONDS pending quorum
    shift
    local deadline=$((SECONDS + timeout))
    while :; do
        pending=''
        for n in "$@"; do
            if ! cl_kpid "$n" >/dev/null; then
                cl_print_node_failure_logs "$n"
                cl_stop_started
                die "$(cl_kname "$n") exited during startup (last log lines above; its log: $(cl_klog "$n"))"
            fi
            if ! cl_kafka_node_answers "$n" 3; then
                pending=$n
                break
            fi
        done
        if [[ -z $pending ]]; then
            if quorum=$(cl_quorum); then
                log "Kafka cluster ready after $((SECONDS - start))s: brokers $(cl_bootstrap), quorum $quorum"
                return 0
            fi
        fi
        if ((SECONDS >= deadline)); then
            if [[ -n $pending ]]; then
                cl_print_node_failure_logs "$pending"
                cl_stop_started
                die "$(cl_kname "$pending") did not come up within ${timeout}s:" \
                    "$(head -c 300 "$(cl_ndir "$pending")/logs/probe.err" 2>/dev/null)." \
                    "Its log: $(cl_klog "$pending") (last lines above)"
            fi
            cat "$CL_DIR/quorum.err" >&2 2>/dev/null || true
            cl_stop_started
            die "all brokers answer, but the controller quorum has no leader after ${timeout}s." \
                "Logs: $CL_DIR/kafka-{1,2,3}/logs/server.log"
        fi
        sleep 0.5
    done
}

# --- Redis Cluster -----------------------------------------------------------------------------

cl_rcli() {
    local port=$1
    shift
    timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

# One field of CLUSTER INFO / INFO as seen by the node on port $1.
cl_rinfo() { cl_rcli "$1" "${@:3}" | sed -n "s/^$2://p"; }

cl_start_redis_node() {
    local port=$1 dir deadline
    dir=$(cl_rdir "$port")
    mkdir -p "$dir"
    rm -f "$dir/redis.pid"
    log "starting redis-server on $HOST:$port (cluster bus $((port + 10000)))"
    redis-server --daemonize yes --bind "$HOST" --port "$port" --protected-mode yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$CL_REDIS_NODE_TIMEOUT" \
        --save '' --appendonly yes --appendfsync everysec --shutdown-timeout 3 8>&- 9>&- ||
        cl_die "redis-server failed to start on port $port (see $(cl_rlog "$port"))"
    deadline=$((SECONDS + 15))
    until cl_rpid "$port" >/dev/null && [[ $(cl_rcli "$port" ping) == PONG ]]; do
        if ((SECONDS >= deadline)); then
            [[ -s $dir/redis.log ]] && tail -n 20 "$dir/redis.log" >&2
            cl_die "Redis node $HOST:$port did not answer PING within 15s; its log: $(cl_rlog "$port")"
        fi
        sleep 0.1
    done
}

# Empties nodes left half-configured by an interrupted create (ours: the marker is missing), then creates the
# cluster: the first three ports become masters, the other three their replicas.
cl_create_redis_cluster() {
    local port
    local -a addrs=()
    for port in $(cl_redis_ports); do
        addrs+=("$HOST:$port")
        if [[ $(cl_rinfo "$port" cluster_known_nodes cluster info) != 1 ||
            $(cl_rinfo "$port" cluster_slots_assigned cluster info) != 0 ]]; then
            log "resetting Redis node $HOST:$port (left over from an unfinished cluster create)"
            cl_rcli "$port" flushall >/dev/null
            cl_rcli "$port" cluster reset hard >/dev/null
        fi
    done
    log "creating the Redis Cluster (3 masters, 1 replica each)"
    if ! timeout 120 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$CL_DIR/redis-create.log" 2>&1 8>&- 9>&-; then
        tail -n 30 "$CL_DIR/redis-create.log" >&2
        cl_die "redis-cli --cluster create failed (output above, full log $CL_DIR/redis-create.log)"
    fi
    cl_redis_ports | paste -sd' ' >"$CL_REDIS_MARKER"
}

# 0 when every node says cluster_state:ok with all 16384 slots served and 6 known nodes, there are 3 masters
# with slots and 3 replicas, and each replica's link to its master is up. Otherwise the reason is in
# CL_REDIS_NOT_READY.
CL_REDIS_NOT_READY=''
cl_redis_cluster_ready() {
    local port state slots known masters replicas link nodes
    for port in $(cl_redis_ports); do
        state=$(cl_rinfo "$port" cluster_state cluster info)
        slots=$(cl_rinfo "$port" cluster_slots_ok cluster info)
        known=$(cl_rinfo "$port" cluster_known_nodes cluster info)
        if [[ $state != ok || $slots != 16384 || $known != 6 ]]; then
            CL_REDIS_NOT_READY="node $HOST:$port reports cluster_state:${state:-?} cluster_slots_ok:${slots:-?} cluster_known_nodes:${known:-?}"
            return 1
        fi
        if [[ $(cl_rinfo "$port" role info replication) == slave ]]; then
            link=$(cl_rinfo "$port" master_link_status info replication)
            if [[ $link != up ]]; then
                CL_REDIS_NOT_READY="replica $HOST:$port: master_link_status:${link:-?}"
                return 1
            fi
        fi
    done
    nodes=$(cl_rcli "$CL_REDIS_PORT" cluster nodes)
    masters=$(awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8' <<<"$nodes" | wc -l)
    replicas=$(awk '$3 ~ /slave/ && $3 !~ /fail/' <<<"$nodes" | wc -l)
    if ((masters != 3 || replicas != 3)); then
        CL_REDIS_NOT_READY="CLUSTER NODES lists $masters healthy masters with slots and $replicas healthy replicas (want 3 and 3)"
        return 1
    fi
}

cl_wait_redis_ready() {
    local timeout=$1 deadline=$((SECONDS + $1)) start=$SECONDS
    until cl_redis_cluster_ready; do
        if ((SECONDS >= deadline)); then
            cl_die "the Redis Cluster is not ready after ${timeout}s: $CL_REDIS_NOT_READY." \
                "Logs: $CL_DIR/redis-*/redis.log; if its nodes were partly wiped, run '$0 up --cluster --fresh'"
        fi
        sleep 0.2
    done
    log "Redis Cluster ready after $((SECONDS - start))s: cluster_state:ok, 3 masters, 3 replicas"
}

# --- stopping ----------------------------------------------------------------------------------

# stop_pids GRACE NAME PID [NAME PID ...]: TERM all at once, wait up to GRACE seconds, then KILL the rest.
stop_pids() {
    local grace=$1 waited=0 i alive
    shift
    local -a args=("$@")
    for ((i = 0; i < ${#args[@]}; i += 2)); do
        log "stopping ${args[i]} (pid ${args[i + 1]})"
        kill -TERM "${args[i + 1]}" 2>/dev/null || true
    done
    while :; do
        alive=0
        for ((i = 0; i < ${#args[@]}; i += 2)); do
            kill -0 "${args[i + 1]}" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        if ((waited >= grace * 10)); then
            for ((i = 0; i < ${#args[@]}; i += 2)); do
                if kill -0 "${args[i + 1]}" 2>/dev/null; then
                    log "${args[i]} did not exit within ${grace}s, sending KILL"
                    kill -KILL "${args[i + 1]}" 2>/dev/null || true
                fi
            done
            sleep 0.2
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

cl_stop_all() {
    local n port pid
    local -a kafka=() redis=()
    for n in "${CL_NODES[@]}"; do
        pid=$(cl_kpid "$n") && kafka+=("kafka-$n" "$pid")
    done
    for port in $(cl_redis_ports); do
        pid=$(cl_rpid "$port") && redis+=("redis-$port" "$pid")
    done
    ((${#kafka[@]})) || log "kafka cluster: no node running (nothing of ours to stop)"
    ((${#redis[@]})) || log "redis cluster: no node running (nothing of ours to stop)"
    # All at once: each broker's controlled shutdown needs the controller quorum, which stopping them one at a
    # time would lose (2 of 3 voters gone) before the last broker asks. Measured: two brokers exit after ~2.5 s,
    # the last one ~5 s later; the Redis nodes within 2 s.
    if ((${#kafka[@]} + ${#redis[@]})); then
        stop_pids 60 ${kafka[@]+"${kafka[@]}"} ${redis[@]+"${redis[@]}"}
    fi
    for n in "${CL_NODES[@]}"; do rm -f "$(cl_ndir "$n")/kafka.pid"; done
    for port in $(cl_redis_ports); do rm -f "$(cl_rdir "$port")/redis.pid"; done
}

cl_wipe() {
    log "wiping the cluster profile's Kafka and Redis data ($CL_DIR)"
    rm -rf "$CL_DIR"
    mkdir -p "$CL_DIR"
}

# --- commands ----------------------------------------------------------------------------------

cl_cmd_up() {
    local fresh=0 arg n port start=$SECONDS create_redis=0 missing_conf=''
    local -a start_kafka=() start_redis=()
    for arg in "$@"; do
        case $arg in
        --fresh) fresh=1 ;;
        *) die "unknown option for up --cluster: $arg" ;;
        esac
    done
    cl_take_lock
    if ((fresh)); then
        cl_stop_all
        cl_wipe
    fi
    for n in "${CL_NODES[@]}"; do
        cl_kpid "$n" >/dev/null || start_kafka+=("$n")
    done
    for port in $(cl_redis_ports); do
        cl_rpid "$port" >/dev/null || start_redis+=("$port")
    done

    # Fail on foreign port owners before any download or process start.
    for n in ${start_kafka[@]+"${start_kafka[@]}"}; do
        require_free_port "$(cl_kport "$n")" "cluster Kafka broker $n, FATIGUE_CLUSTER_KAFKA_PORT" "$CL_PORT_SETTINGS"
        require_free_port "$(cl_cport "$n")" "cluster Kafka controller $n, FATIGUE_CLUSTER_CONTROLLER_PORT" "$CL_PORT_SETTINGS"
    done
    for port in ${start_redis[@]+"${start_redis[@]}"}; do
        require_free_port "$port" "cluster Redis node, FATIGUE_CLUSTER_REDIS_PORT" "$CL_PORT_SETTINGS"
        require_free_port $((port + 10000)) "cluster bus of Redis node $port, FATIGUE_CLUSTER_REDIS_PORT + 10000" "$CL_PORT_SETTINGS"
    done

    if [[ -f $CL_REDIS_MARKER ]]; then
        # Created before: the nodes rejoin from their nodes.conf. One without it would start as a lone node.
        for port in $(cl_redis_ports); do
            [[ -f $(cl_rdir "$port")/nodes.conf ]] || missing_conf+=" $port"
        done
        [[ -z $missing_conf ]] ||
            die "the Redis Cluster was created, but node(s)$missing_conf lost their nodes.conf ($CL_DIR/redis-PORT);" \
                "run '$0 up --cluster --fresh' to wipe and recreate the cluster profile"
    else
        create_redis=1
    fi

    require_python
    if ((${#start_kafka[@]})); then
        require_java
        cl_resolve_kafka_jars
    fi
    if ((${#start_redis[@]})); then
        ensure_redis_server
        command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (Debian: apt-get install redis-tools)"
    fi

    if ((${#start_kafka[@]})); then
        for n in "${start_kafka[@]}"; do cl_write_kafka_config "$n"; done
        cl_format_storage
        for n in "${start_kafka[@]}"; do
            cl_start_kafka_node "$n"
            CL_STARTED+=("$n")
        done
    fi
    # Redis starts and forms its cluster while the JVMs boot.
    for port in ${start_redis[@]+"${start_redis[@]}"}; do cl_start_redis_node "$port"; done
    ((create_redis)) && cl_create_redis_cluster
    cl_wait_redis_ready 60

    if ((${#start_kafka[@]} == 0)); then
        log "Kafka cluster already running; checking that it answers"
    fi
    cl_wait_kafka_ready "$CL_READY_TIMEOUT" "${CL_NODES[@]}"
    if ((${#start_kafka[@]} == 0 && ${#start_redis[@]} == 0)); then
        log "cluster profile already up"
    else
        log "cluster profile up in $((SECONDS - start))s"
    fi
    log "use it with: eval \"\$($0 env --cluster)\""
}

cl_cmd_down() {
    cl_take_lock
    cl_stop_all
}

cl_cmd_reset() {
    cl_take_lock
    cl_stop_all
    cl_wipe
}

cl_cmd_status() {
    local n port pid out ok=0 role line slots master kafka_running=0 redis_running=0
    mkdir -p "$CL_DIR"
    for n in "${CL_NODES[@]}"; do
        if pid=$(cl_kpid "$n"); then
            kafka_running=1
            if cl_kafka_node_answers "$n" 1; then
                out=$(timeout 20 "$PYTHON" "$HERE/kafka_probe.py" "$HOST:$(cl_kport "$n")" 2>/dev/null) || true
                out=${out#brokers=}
                out=${out%% *}
                echo "kafka-$n: running (pid $pid), answering on $HOST:$(cl_kport "$n"), live brokers: $(grep -o '[0-9]*@' <<<"$out" | tr -d @ | paste -sd,)"
            else
                echo "kafka-$n: running (pid $pid), NOT answering on $HOST:$(cl_kport "$n"): $(head -c 300 "$(cl_ndir "$n")/logs/probe.err" 2>/dev/null)"
                ok=1
            fi
        else
            if port_open "$(cl_kport "$n")"; then
                echo "kafka-$n: not running (port $(cl_kport "$n") is used by another process)"
            else
                echo "kafka-$n: not running"
            fi
            ok=1
        fi
    done
    if ((kafka_running == 0)); then
        echo "kafka quorum: no node running"
    elif out=$(cl_quorum); then
        echo "kafka quorum: $out"
    else
        echo "kafka quorum: no answer: $(head -c 300 "$CL_DIR/quorum.err" 2>/dev/null)"
        ok=1
    fi
    for port in $(cl_redis_ports); do
        if pid=$(cl_rpid "$port"); then
            redis_running=1
            role=$(cl_rinfo "$port" role info replication)
            if [[ -z $role ]]; then
                echo "redis-$port: running (pid $pid), NOT answering on $HOST:$port"
                ok=1
            elif [[ $role == master ]]; then
                line=$(cl_rcli "$port" cluster nodes | awk '$3 ~ /myself/')
                slots=$(awk '{ s = ""; for (i = 9; i <= NF; i++) s = s (s ? "," : "") $i; print s }' <<<"$line")
                echo "redis-$port: running (pid $pid), master, slots ${slots:-none}, $(cl_rinfo "$port" cluster_state cluster info | sed 's/^/cluster_state:/')"
            else
                master="$(cl_rinfo "$port" master_host info replication):$(cl_rinfo "$port" master_port info replication)"
                echo "redis-$port: running (pid $pid), replica of $master, link $(cl_rinfo "$port" master_link_status info replication), $(cl_rinfo "$port" cluster_state cluster info | sed 's/^/cluster_state:/')"
            fi
        else
            if port_open "$port"; then
                echo "redis-$port: not running (port $port is used by another process)"
            else
                echo "redis-$port: not running"
            fi
            ok=1
        fi
    done
    if ((redis_running == 0)); then
        echo "redis cluster: no node running"
    elif cl_redis_cluster_ready; then
        echo "redis cluster: ok (cluster_state:ok, 16384 slots, 3 masters, 3 replicas)"
    else
        echo "redis cluster: NOT ok: $CL_REDIS_NOT_READY"
        ok=1
    fi
    return "$ok"
}

# Single quotes: the values hold only digits, dots, colons and URL punctuation (never a quote).
cl_cmd_env() {
    printf "export FATIGUE_BOOTSTRAP='%s'\n" "$(cl_bootstrap)"
    printf "export FATIGUE_REDIS_URL='%s'\n" "$(cl_redis_url)"
}

cl_cmd_logs() {
    local n f port
    for n in "${CL_NODES[@]}"; do
        for f in "$(cl_ndir "$n")/logs/server.log" "$(cl_ndir "$n")/logs/kafka.out"; do
            [[ -s $f ]] || continue
            printf '==> %s <==\n' "$f"
            tail -n 30 "$f"
        done
    done
    for port in $(cl_redis_ports); do
        f=$(cl_rlog "$port")
        [[ -s $f ]] || continue
        printf '==> %s <==\n' "$f"
        tail -n 15 "$f"
    done
}

# --- fault injection ---------------------------------------------------------------------------

cl_cmd_kill_broker() {
    local n=${1:-} pid
    require_valid_node "$n"
    cl_take_lock
    pid=$(cl_kpid "$n") || die "$(cl_kname "$n") is not running"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$(cl_ndir "$n")/kafka.pid"
    log "killed $(cl_kname "$n") (pid $pid) with SIGKILL; '$0 start-broker $n --cluster' starts it again"
}

cl_cmd_stop_broker() {
    local n=${1:-} pid
    require_valid_node "$n"
    cl_take_lock
    pid=$(cl_kpid "$n") || die "$(cl_kname "$n") is not running"
    stop_pids 60 "kafka-$n" "$pid"
    rm -f "$(cl_ndir "$n")/kafka.pid"
}

# Same config and data as before; returns once the node is back in the metadata it serves itself.
cl_cmd_start_broker() {
    local n=${1:-} pid
    require_valid_node "$n"
    cl_take_lock
    if pid=$(cl_kpid "$n"); then
        log "$(cl_kname "$n") is already running (pid $pid)"
        return 0
    fi
    [[ -f $(cl_ndir "$n")/data/meta.properties ]] ||
        die "$(cl_kname "$n") has no formatted storage: start the whole cluster with '$0 up --cluster'"
    require_free_port "$(cl_kport "$n")" "cluster Kafka broker $n" "$CL_PORT_SETTINGS"
    require_free_port "$(cl_cport "$n")" "cluster Kafka controller $n" "$CL_PORT_SETTINGS"
    require_python
    require_java
    cl_start_kafka_node "$n"
    CL_STARTED=("$n")
    local deadline=$((SECONDS + CL_READY_TIMEOUT)) start=$SECONDS
    until cl_kafka_node_answers "$n" 1; do
        if ! cl_kpid "$n" >/dev/null; then
            cl_print_node_failure_logs "$n"
            rm -f "$(cl_ndir "$n")/kafka.pid"
            die "$(cl_kname "$n") exited during startup (last log lines above; its log: $(cl_klog "$n"))"
        fi
        if ((SECONDS >= deadline)); then
            cl_print_node_failure_logs "$n"
            cl_stop_started
            die "$(cl_kname "$n") did not come up within ${CL_READY_TIMEOUT}s:" \
                "$(head -c 300 "$(cl_ndir "$n")/logs/probe.err" 2>/dev/null). Its log: $(cl_klog "$n")"
        fi
        sleep 0.25
    done
    log "$(cl_kname "$n") is back after $((SECONDS - start))s (its replicas catch up in the background)"
}

cl_cmd_kill_redis() {
    local port=${1:-} pid
    require_valid_redis_port "$port"
    cl_take_lock
    pid=$(cl_rpid "$port") || die "Redis node $HOST:$port is not running"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$(cl_rdir "$port")/redis.pid"
    log "killed Redis node $HOST:$port (pid $pid) with SIGKILL; '$0 start-redis $port --cluster' starts it again"
}

# Same nodes.conf and AOF as before; returns once the node sees cluster_state:ok and, as a replica, is linked to
# its master (a master killed for longer than cluster-node-timeout comes back as its successor's replica).
cl_cmd_start_redis() {
    local port=${1:-} pid deadline
    require_valid_redis_port "$port"
    cl_take_lock
    if pid=$(cl_rpid "$port"); then
        log "Redis node $HOST:$port is already running (pid $pid)"
        return 0
    fi
    [[ -f $(cl_rdir "$port")/nodes.conf ]] ||
        die "Redis node $HOST:$port has no nodes.conf: start the whole cluster with '$0 up --cluster'"
    require_free_port "$port" "cluster Redis node" "$CL_PORT_SETTINGS"
    require_free_port $((port + 10000)) "cluster bus of Redis node $port" "$CL_PORT_SETTINGS"
    cl_start_redis_node "$port"
    deadline=$((SECONDS + 30))
    until [[ $(cl_rinfo "$port" cluster_state cluster info) == ok ]] &&
        [[ $(cl_rinfo "$port" role info replication) == master ||
            $(cl_rinfo "$port" master_link_status info replication) == up ]]; do
        ((SECONDS < deadline)) ||
            die "Redis node $HOST:$port is up but within 30s it does not see cluster_state:ok or (as a replica)" \
                "has no link to its master; its log: $(cl_rlog "$port")"
        sleep 0.2
    done
    log "Redis node $HOST:$port is back as $(cl_rinfo "$port" role info replication), cluster_state:ok"
}

cl_cmd_leader() {
    local topic=${1:-} partition=${2:-} out
    [[ -n $topic ]] || die "usage: $0 leader TOPIC [PARTITION] --cluster"
    require_python
    if [[ -z $partition ]]; then
        timeout 30 "$PYTHON" "$HERE/kafka_probe.py" "$(cl_bootstrap)" --topic "$topic"
        return
    fi
    [[ $partition =~ ^[0-9]+$ ]] || die "PARTITION must be a number, got '$partition'"
    out=$(timeout 30 "$PYTHON" "$HERE/kafka_probe.py" "$(cl_bootstrap)" --topic "$topic" --partition "$partition") ||
        exit 1
    out=${out#*leader=}
    printf '%s\n' "${out%% *}"
}

cl_main() {
    local cmd=$1
    shift
    case $cmd in
    up) cl_cmd_up "$@" ;;
    down) cl_cmd_down ;;
    status) cl_cmd_status ;;
    env) cl_cmd_env ;;
    reset) cl_cmd_reset ;;
    logs) cl_cmd_logs ;;
    kill-broker) cl_cmd_kill_broker "$@" ;;
    stop-broker) cl_cmd_stop_broker "$@" ;;
    start-broker) cl_cmd_start_broker "$@" ;;
    kill-redis) cl_cmd_kill_redis "$@" ;;
    start-redis) cl_cmd_start_redis "$@" ;;
    leader) cl_cmd_leader "$@" ;;
    *) die "unknown command for the cluster profile: $cmd" ;;
    esac
}
