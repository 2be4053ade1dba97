#!/usr/bin/env bash
# Every GPU measurement behind one command (dummy weights of the real architectures: nothing is downloaded).
#
#   bench/gpu.sh --quick     # FIRST on any GPU machine: headline rows + a CUDA smoke of every path, <= 4 minutes
#   bench/gpu.sh             # everything (about 8 minutes on an H100/H200-class machine)
#   bench/gpu.sh --dry-run   # no GPU: print the plan and rehearse the quick rows on this CPU at tiny sizes, with
#                            # only the packages the GPU machine has plus the locked wheels (CI runs this)
#
# Writes bench/out/*.json (or $OUT/*.json when OUT is set) and prints the tables.
# The GPU machine lacks some of streamgen's dependencies; they are carried as the exact wheels pinned in
# bench/gpu-wheels.lock (scripts/fetch_gpu_wheels.sh [--quick] fetches them into .whl/ where PyPI is reachable).
# TensorRT is never among them (its wheels are over a gigabyte): its rows say "not installed" unless the machine has it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
    --quick) mode=quick ;;
    --dry-run) mode=dry-run ;;
    "") ;;
    *) echo "usage: bench/gpu.sh [--quick | --dry-run]" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-bench/out}
mkdir -p "$out"

if [ "$mode" = dry-run ]; then
    python3 -m bench.gpu_plan requirements --group full >/dev/null  # the lock parses
    python3 -m bench.gpu_quick --plan --rehearse
    exec python3 -m bench.gpu_quick --rehearse --out "$out/gpu-quick-rehearsal.json"
fi

group=$([ "$mode" = quick ] && echo quick || echo full)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m bench.gpu_plan check --group "$group" --folder .whl || echo "gpu.sh: carrying on; rows that need a missing wheel will say so"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "gpu.sh: no .whl/ folder; run scripts/fetch_gpu_wheels.sh$([ "$group" = quick ] && echo " --quick") where PyPI is reachable and carry .whl"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"

# 0. the headline rows and the CUDA smoke (first: if the machine goes away, these are the numbers we have)
python3 -m bench.gpu_quick --out "$out/gpu-quick.json"
[ "$mode" = quick ] && exit 0

# 1. image pipeline: sd-turbo architecture, fp16, 512x512, TAESD; stream batch vs sequential, RCFG, 4 sessions
python3 -m bench.image --device cuda --sizes 256 --dummy-sd-turbo --frames 96 --out "$out/image-gpu.json"
# 2. engines: eager vs torch.compile vs ONNX Runtime (vs TensorRT where installed), sd-turbo 512 and tiny-video; cold/warm first frame
python3 -m bench.engines --device cuda --model sd-turbo --dummy --sizes 512 --frames 48 --out "$out/engines-gpu.json" --engine-dir /tmp/engines
# 3. causal video: Wan-1.3B causal student architecture, bf16, 1-4 steps
python3 -m bench.video --no-tiny --wan-sizes 512 --steps 1,2 --chunks 12 --out "$out/video-gpu.json"
# 4. video sessions batched in one step vs one by one, Wan-1.3B
python3 -m bench.video_sessions --device cuda --models tiny-video --wan --chunks 6 --repeats 2 --out "$out/video_sessions-gpu.json"
# 5b. prompt switch cost, blend vs KV re-cache, Wan-1.3B (the chunk that applies a switch vs a normal one)
python3 -m bench.prompt_switch --out "$out/prompt_switch-gpu.json"
# 5. pipeline stages, Wan-1.3B causal architecture (dummy weights) over 2 and 4 GPUs vs one, where the machine has them
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    ranks="2"; [ "$gpus" -ge 4 ] && ranks="2 4"
    python3 -m bench.scaling --cuda --model wan-causal-1.3b --size 512 --steps 1 --frames 97 --ranks $ranks --out "$out/scaling-gpu.json"
else
    echo "pipeline stages: this machine has $gpus GPU(s); stages need 2 or more"
fi
