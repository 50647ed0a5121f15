# Sourced by the benchmark scripts.

# Builds weir in release mode and sets WEIR to the binary.
bench_build() {
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --quiet --release --bin weir
  WEIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/weir"
}

# This machine: its cores, memory and CPU model.
bench_hardware() {
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}

# `bench_setup DIR PORT EVENTS` installs what is missing, builds weir (bench_build), starts a
# tansu broker on 127.0.0.1:PORT with its data in DIR/broker (sets KAFKA_BROKERS, stopped on
# exit), writes EVENTS reference events into 8 partitions of `web-events` (1 % late, 1 %
# malformed, seed 1), and prints the hardware.
bench_setup() {
  local dir=$1 port=$2 events=$3
  bash scripts/setup.sh >/dev/null
  bench_build
  rm -rf "$dir"
  source scripts/broker.sh
  start_broker "$dir/broker" "$port"
  echo "generating $events events into 8 partitions..."
  $WEIR gen --brokers "$KAFKA_BROKERS" --topic web-events --partitions 8 --count "$events" \
    --users 100000 --span 8h --late-fraction 0.01 --malformed-fraction 0.01 --seed 1 >/dev/null
  echo "hardware: $(bench_hardware)"
}
