#!/usr/bin/env bash
# kvpages attention vs PyTorch's CPU scaled_dot_product_attention (scripts/bench_attention_peers.py),
# in a virtual environment of its own. A benchmark, not a test: it prints markdown tables.
#
#   scripts/bench-attention-peers.sh [args for bench_attention_peers.py, e.g. --quick, --decode,
#                                     --prompts 512,2048, --reps 5, --threads 2]
#
# The library and the venv (numpy, torch) come from scripts/bench-env.sh: its comments list the
# environment variables (KVPAGES_LIBRARY, KVP_BENCH_VENV, KVP_BENCH_TORCH_INDEX, ...) and say
# which torch PyPI gives. Without torch only the kvpages side runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/bench-env.sh"
exec "$VPY" "$ROOT/scripts/bench_attention_peers.py" "$@"
