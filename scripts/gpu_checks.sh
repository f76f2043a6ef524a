#!/usr/bin/env bash
# Every check that needs a GPU, in one script: the CUDA tests, then the maze population
# benchmark on the device (docs/agent.md, "Many seeds in one process") with and without CUDA
# graphs, and the Omniglot task-batching benchmark (docs/omniglot.md, "Adapting a meta-batch
# together"). Prints the card first, so that each figure can be recorded with the card that
# gave it. Each part has its own time limit and a failing part does not stop the others.
#
#     bash scripts/gpu_checks.sh [OUT_DIR] [OMNIGLOT_DATA]
#
# OUT_DIR (default gpu_checks/) receives one log per part; OMNIGLOT_DATA (default: the
# package's default data folder) is the Omniglot folder for the Omniglot benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_checks}
data=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)

part() {  # part NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc"
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

part tests 150 "$py" -m pytest -q -rs -k "cuda" -p no:cacheprovider \
    tests/test_population.py tests/test_envs_dynamics.py tests/test_agent_trainer.py \
    tests/test_agent_warp_rnn.py
part bench_population_warp 150 "$py" scripts/bench_train_maze.py --device cuda \
    --agent warp_identity_orth --population 1 10 30 --cuda-graph --episodes 2 --profile
part bench_population_lstm 70 "$py" scripts/bench_train_maze.py --device cuda --agent lstm \
    --population 1 10 --cuda-graph --episodes 2
data_flag=()
[ -n "$data" ] && data_flag=(--data-root "$data")
part bench_omniglot_leap 90 "$py" -m warp_rl.omniglot.bench --device cuda "${data_flag[@]}" \
    --meta-model leap --tasks 5 20 --task-steps 100 --task-batching loop grouped \
    --num-filters 64 --warmup 1 --meta-steps 2
part bench_omniglot_warp_leap 90 "$py" -m warp_rl.omniglot.bench --device cuda \
    "${data_flag[@]}" --meta-model warp_leap --tasks 5 --task-steps 100 \
    --task-batching loop grouped --num-filters 64 --warmup 1 --meta-steps 2
