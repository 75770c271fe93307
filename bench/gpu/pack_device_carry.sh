#!/usr/bin/env bash
# Pack .devcarry/ for bench/gpu/run_on_device.sh: the cp312 ROS runtime of .venv-device (without the build-only
# parts and the packages the GPU machine has: numpy, PyYAML, pip) and the real nuScenes key frame from ../shared.
# .devcarry/ is ignored by git (.git/info/exclude) and must stay under the device tool's 64 MiB.
set -eu
cd "$(dirname "$0")/../.."
[ -x .venv-device/bin/python ] || { echo "no .venv-device: run tools/setup_env.py --device-runtime with Python 3.12"; exit 1; }
mkdir -p .devcarry
SPX=./lib/python3.12/site-packages
tar -C .venv-device --exclude=./bin --exclude=./include --exclude=./.labeldistill-setup --exclude='*/__pycache__' \
  --exclude="$SPX/pip" --exclude="$SPX/setuptools" --exclude="$SPX/numpy" --exclude="$SPX/numpy.libs" \
  --exclude="$SPX/numpy-*" --exclude="$SPX/docutils" --exclude="$SPX/yaml" --exclude="$SPX/_yaml" \
  -czf .devcarry/ros312.tgz .
rm -rf .devcarry/real-nuscenes-sample && cp -r ../shared/real-nuscenes-sample .devcarry/
du -sh .devcarry
