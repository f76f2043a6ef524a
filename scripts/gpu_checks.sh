#!/usr/bin/env bash
# Every check that needs a GPU, in one script: the CUDA tests, then the maze training
# benchmarks on the device (docs/agent.md, "Speed" and "Many seeds in one process") and the
# Omniglot task-batching benchmark (docs/omniglot.md, "Adapting a meta-batch together").
# Prints the card first, so that each figure can be recorded with the card that gave it.
#
#     bash scripts/gpu_checks.sh 2>&1 | tee gpu_checks.txt
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"
python -m pytest -q -rs -k cuda tests/test_agent_warp_rnn.py tests/test_agent_trainer.py \
    tests/test_population.py tests/test_envs_dynamics.py
python scripts/bench_train_maze.py --device cuda --batch-sizes 30 1024 --episodes 3
for agent in warp_identity_orth lstm; do
    python scripts/bench_train_maze.py --device cuda --population 1 10 30 --agent "$agent" \
        --episodes 3
done
python -m warp_rl.omniglot.bench --device cuda --meta-model leap --tasks 5 20 --task-steps 100 \
    --warmup 1
python -m warp_rl.omniglot.bench --device cuda --meta-model warp_leap --tasks 20 \
    --task-steps 100 --warmup 1
