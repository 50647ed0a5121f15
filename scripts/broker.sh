# Sourced by the scripts that need a Kafka broker: `start_broker DIR PORT` starts tansu on
# 127.0.0.1:PORT with its SQLite storage in DIR, exports KAFKA_BROKERS, stops it on exit, and
# returns once the port accepts connections.
start_broker() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  export KAFKA_BROKERS=127.0.0.1:$port
  # tansu resolves sqlite:// paths against its working directory.
  (cd "$dir" && exec tansu broker --listener-url "tcp://$KAFKA_BROKERS" \
     --advertised-listener-url "tcp://$KAFKA_BROKERS" --storage-engine sqlite://tansu.db) \
     >"$dir/tansu.log" 2>&1 &
  BROKER_PID=$!
  trap 'kill $BROKER_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the broker did not start; see $dir/tansu.log" >&2
  return 1
}
