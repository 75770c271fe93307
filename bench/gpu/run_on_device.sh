#!/usr/bin/env bash
# GPU checks and figures on a lent GPU machine (the `device` tool's `run`), from the repository root there:
#
#   here:   ~/.pyenv/versions/3.12.1/bin/python3.12 tools/setup_env.py --device-runtime   # .venv-device (cp312)
#           bench/gpu/pack_device_carry.sh                                                  # .devcarry/
#   there:  run(command="bash bench/gpu/run_on_device.sh", carry=[".devcarry"], timeout_s=560)
#
# The GPU machine's python3 is 3.12 with a CUDA torch and no ROS; .devcarry brings the ROS 2 Kilted cp312 runtime
# (rclpy, Fast DDS, the message packages and the three interfaces built here) and the real nuScenes key frame.
# Steps (each logged to $OUT/<step>.log, its tail printed; a failing step does not stop the next):
#   pytest       the CUDA tests (Detector's no-host-sync set path, fp16 against fp32) and the staging tests
#   bench_model  bench/bench_model.py --gpu-only: gpu_forward_ms_p50 for r18 and r50, fp32 and fp16
#   bench_model_compiled  the same with --gpu-compile: also fp16 through backend compiled, and with CUDA graphs
#   node_*       bench/bench_node.py --device cuda: the live node on the GPU, six 1600x900 cameras at 12 Hz
#                (node_r50_fp16_compiled: with backend compiled)
# bench/results/model.json and node.json come back in $OUT; copy them into bench/results/ here.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
R=/tmp/ros312
if [ ! -d "$R/lib" ]; then mkdir -p "$R" && tar -C "$R" -xzf .devcarry/ros312.tgz || exit 1; fi
SP=$R/lib/python3.12/site-packages
LIBS=$(ls -d "$SP"/ros_*.libs | paste -sd: -)
export LD_LIBRARY_PATH="$R/lib:$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD:$SP" AMENT_PREFIX_PATH="$R" PYTHONUNBUFFERED=1 _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
if [ ! -d ../shared/real-nuscenes-sample ]; then mkdir -p ../shared && cp -r .devcarry/real-nuscenes-sample ../shared/; fi
PY=${PY:-python3}

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*"
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-30}" "$OUT/$name.log"
}

nvidia-smi -L 2>/dev/null
$PY -c "import torch, rclpy, numpy; from vision_msgs.msg import Detection3DArray; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'numpy', numpy.__version__)" \
  || exit 1
STEPS=${STEPS:-pytest bench_model node_r50_fp16 node_r18_fp16 node_r50_fp32}
for s in $STEPS; do
  case $s in
    pytest) TAIL=15 step pytest 240 $PY -m pytest -q -p no:cacheprovider -o addopts= test/test_node_inference.py \
              test/test_node_staging.py test/test_temporal_buffer.py test/test_reception_gate.py \
              test/test_compiled_backend.py ;;
    bench_model) step bench_model 150 $PY bench/bench_model.py --gpu-only ;;
    bench_model_compiled) step bench_model_compiled 330 $PY bench/bench_model.py --gpu-only --gpu-compile ;;
    node_r50_fp16_compiled) step node_r50_fp16_compiled 240 $PY bench/bench_node.py --device cuda --model r50_256x704 \
              --precision fp16 --backend compiled --duration 30 ;;
    node_r50_fp16) step node_r50_fp16 120 $PY bench/bench_node.py --device cuda --model r50_256x704 --precision fp16 --duration 30 ;;
    node_r18_fp16) step node_r18_fp16 100 $PY bench/bench_node.py --device cuda --model r18_128x352_cpu --precision fp16 --duration 25 ;;
    node_r50_fp32) step node_r50_fp32 100 $PY bench/bench_node.py --device cuda --model r50_256x704 --precision fp32 --duration 25 ;;
  esac
done
cp bench/results/model.json bench/results/node.json "$OUT/" 2>/dev/null
echo "done in $SECONDS s"
