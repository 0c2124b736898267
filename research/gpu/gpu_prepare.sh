#!/usr/bin/env bash
# Here, before a device call: the job folder the GPU scripts read (gpu_train.sh, gpu_cv.sh).
#
#   bash research/gpu/gpu_prepare.sh [JOB_DIR]     # default gpujob: PACK.zip (35 MB) + enc_fp16.safetensors (17 MB)
#
# Only 64 MiB travel to the device machine: the job folder plus the tracked tree. The bundled model
# files (87 MB) must stay behind for the call: move them aside and back (the script prints how).
set -eu
JOB=${1:-gpujob}
PY=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
mkdir -p "$JOB"
[ -f "$JOB/PACK.zip" ] || $PY "$SHARED/gpu/pack.py" "$SHARED/data/lgg-kaggle_3m" "$JOB/PACK.zip"
$PY - "$SHARED/weights/resnet50_imagenet_msra_stem-layer3.pth" "$JOB/enc_fp16.safetensors" <<'PY'
import sys
import torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in sd.items()}, sys.argv[2])
PY
grep -qx "/$JOB/" .git/info/exclude 2>/dev/null || echo "/$JOB/" >> .git/info/exclude
du -sh "$JOB"
echo "before the call: mkdir -p /tmp/models_aside && mv src/tumorseg/models/default.safetensors src/tumorseg/models/default-int8.onnx /tmp/models_aside/"
echo "the call:        run(command='OUT=\$OUT bash research/gpu/gpu_cv.sh $JOB', carry=['$JOB'], timeout_s=600)"
echo "after the call:  mv /tmp/models_aside/* src/tumorseg/models/ && git status --short"
