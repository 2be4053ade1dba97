#!/usr/bin/env bash
# Every GPU measurement behind one command, sized to finish in under 8 minutes on a fresh
# H100/H200-class machine (dummy weights of the real architectures: nothing is downloaded).
#
#   bench/gpu.sh            # writes bench/out/*-gpu.json (or $OUT/*.json when OUT is set) and prints the tables
#
# A GPU machine that lacks streamgen's own dependencies (diffusers, PyAV, ...) installs them
# from wheels carried in .whl/ (fetch them on a machine with PyPI: scripts/fetch_gpu_wheels.sh).
# TensorRT is not among them (its wheels are over a gigabyte): its rows say "not installed"
# unless the machine has it.
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-bench/out}
mkdir -p "$out"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"

# 1. image pipeline: sd-turbo architecture, fp16, 512x512, TAESD; stream batch vs sequential, RCFG, 4 sessions
python3 -m bench.image --device cuda --sizes 256 --dummy-sd-turbo --frames 96 --out "$out/image-gpu.json"
# 2. engines: eager vs torch.compile vs ONNX Runtime (vs TensorRT where installed), sd-turbo 512 and tiny-video
python3 -m bench.engines --device cuda --model sd-turbo --dummy --sizes 512 --frames 48 --out "$out/engines-gpu.json" --engine-dir /tmp/engines
# 3. causal video: Wan-1.3B causal student architecture, bf16, 1-4 steps
python3 -m bench.video --no-tiny --wan-sizes 512 --steps 1,2 --chunks 12 --out "$out/video-gpu.json"
# 4. video sessions batched in one step vs one by one, Wan-1.3B
python3 -m bench.video_sessions --device cuda --models tiny-video --wan --chunks 6 --repeats 2 --out "$out/video_sessions-gpu.json"
# 5. pipeline stages, Wan-1.3B causal architecture (dummy weights) over 2 and 4 GPUs vs one, where the machine has them
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    ranks="2"; [ "$gpus" -ge 4 ] && ranks="2 4"
    python3 -m bench.scaling --cuda --model wan-causal-1.3b --size 512 --steps 1 --frames 97 --ranks $ranks --out "$out/scaling-gpu.json"
else
    echo "pipeline stages: this machine has $gpus GPU(s); stages need 2 or more"
fi
