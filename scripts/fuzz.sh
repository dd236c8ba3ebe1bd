#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer): scripts/fuzz.sh [target] [seconds]
#
# Builds the fuzz targets in fuzz/ once (instrumented, into target/fuzz),
# then runs each target (or the one named) for `seconds` (default 30) on a
# copy of its committed corpus, so runs never grow the repository. Prints
# executions, time and coverage per target. A crash or a timeout stops the
# run with a non-zero exit and leaves the input in fuzz/artifacts/<target>/;
# replay it with
#   VELA_FUZZ_TARGET=<target> target/fuzz/x86_64-unknown-linux-gnu/release/vela-fuzz <file>
#
# Needs only stable Rust and a C++ compiler (libFuzzer is built from the
# libfuzzer-sys crate): the instrumentation flags are the ones cargo-fuzz
# passes with `--sanitizer none`, without -Z flags. fuzz/ has cargo-fuzz's
# layout and per-target binaries too, for `cargo fuzz run <target> -s none`
# (cargo-fuzz is not needed here, and was not tried).
#
# Environment: VELA_FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(room_protocol device_socket api_json config sfu_datagrams offer tcp_framing)
target="${1:-all}"
seconds="${2:-30}"
if [ "$target" != all ] && [[ ! " ${targets[*]} " == *" $target "* ]]; then
  echo "unknown target $target; one of: ${targets[*]}" >&2
  exit 2
fi
[ "$target" = all ] || targets=("$target")

triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
# The instrumentation cargo-fuzz adds (sancov, 8-bit counters, comparison
# tracing) on stable; --target keeps build scripts and proc macros
# uninstrumented. Debug assertions and overflow checks: fuzz/Cargo.toml.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 --cfg fuzzing ${RUSTFLAGS:-}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

start=$(date +%s)
# Not --locked: fuzz/Cargo.lock pins what the fuzz crate adds (libFuzzer),
# and a dependency main gains later is added to it rather than failing CI.
cargo build --manifest-path fuzz/Cargo.toml --release --target "$triple" --bin vela-fuzz
echo "fuzz: built in $(( $(date +%s) - start )) s"
bin="$CARGO_TARGET_DIR/$triple/release/vela-fuzz"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  corpus="$work/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  cp -r "fuzz/corpus/$t/." "$corpus/" 2>/dev/null || true
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  log="$work/$t.log"
  echo "fuzz: $t for ${seconds} s on $(ls "$corpus" | wc -l) corpus files"
  set +e
  VELA_FUZZ_TARGET="$t" "$bin" "$corpus" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
    ${VELA_FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  # libFuzzer's last status line and final stats.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^stat::.*time.*: *//p' "$log" | tail -1)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || true)
  echo "fuzz: $t: ${execs:-?} executions, ${cov:-no coverage line}, exit $rc"
  if [ $rc -ne 0 ]; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (libFuzzer's 'Test unit written to' line above)"
    failed+=("$t")
  fi
done
rmdir fuzz/artifacts/* fuzz/artifacts 2>/dev/null || true
echo "fuzz: $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
