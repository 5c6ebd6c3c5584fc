#!/bin/bash
# The GPU checks in one run (a machine with CUDA and lipbench installed, from the repository root):
# the tests that skip without CUDA, then the SDP verifiers' scaling on the GPU.  Each stage has its
# own time limit, and each table row is written as it comes (OUT, default gpu-check/).
#   bash benchmarks/gpu_check.sh [STAGE ...]     stages: latency small tests mlp conv depth (default: all)
# latency and small (at most 2 and 4 minutes) answer the small-MLP target first: its row
# (784-256-256-10) and the per-call latencies that explain it; all stages need several calls.
# conv needs a folder of stored conv nets: NETS=RESULTS/networks (e.g. the cifar suite's).
# An offline machine: KIT=gpu-kit (its whl/: the sdp extra's wheels for that machine's Python, from
# `pip download --only-binary=:all: --platform ... --python-version ...` where a registry is reachable;
# with setuptools and wheel, to build lipbench; its nets/: stored conv nets) installs them and lipbench,
# without dependencies, under /tmp first.
OUT=${OUT:-gpu-check}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if [ -n "$KIT" ]; then
  export PYTHONPATH=$PWD:/tmp/lb-site:/tmp/lb-pkg${PYTHONPATH:+:$PYTHONPATH}
  $PY -m pip install -q --no-index --no-deps --target /tmp/lb-site "$KIT"/whl/*.whl \
    && $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/lb-pkg . || exit 1
  NETS=${NETS:-$KIT/nets}
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
mkdir -p "$OUT"
for s in ${@:-latency small tests mlp conv depth}; do
  case $s in
    latency) timeout 120 $PY benchmarks/gpu_latency.py | tee "$OUT/latency.md" ;;
    small) timeout 240 $PY benchmarks/sdp_scaling.py --device cuda --widths 256 \
           --verifiers lipsdp:NATIVE eclipse eclipse-fast --timeout 60 --csv "$OUT/small.csv" ;;
    tests) timeout 600 $PY -m pytest -q -rs tests/test_sdp.py tests/test_exact.py tests/test_cli.py -k "gpu or cuda" ;;
    mlp) timeout 900 $PY benchmarks/sdp_scaling.py --device cuda --widths 128 256 512 1024 2048 \
           --verifiers lipsdp:NATIVE eclipse eclipse-fast --timeout 120 --csv "$OUT/mlp.csv" ;;
    depth) timeout 600 $PY benchmarks/sdp_scaling.py --device cuda --widths 256 --depths 4 8 \
           --verifiers lipsdp:NATIVE eclipse eclipse-fast --timeout 120 --csv "$OUT/depth.csv" ;;
    conv) if [ -n "$NETS" ]; then timeout 1200 $PY benchmarks/sdp_scaling.py --device cuda --widths \
           --networks "$NETS" --verifiers lipsdp:NATIVE lipsdp:NATIVE:dense eclipse eclipse-fast --timeout 120 --csv "$OUT/conv.csv"
          else echo "conv: skipped (set NETS to a folder of stored networks)"; fi ;;
    *) echo "unknown stage $s (latency small tests mlp conv depth)"; exit 2 ;;
  esac
done
