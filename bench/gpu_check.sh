#!/usr/bin/env bash
# The checks a lent GPU runs (BENCHMARKS.md, "GPUs"), in one time-boxed script:
#   bash bench/gpu_check.sh DEVICE OUT_DIR FASHION_MNIST_DIR      (DEVICE: cuda, or cpu for its twin)
# 1. tests/test_device.py (its CUDA tests run where torch sees a GPU);
# 2. two search workers sharing one GPU (--jobs 2 --devices 0,0, journal storage);
# 3. ResNet-20 on all of Fashion-MNIST with issue 27's search settings (bench/specs/gpu-resnet20.toml),
#    then its final stage; 4. three of the same trials on the CPU, on the same cached base.
# Every trial's timing lands in the studies under OUT_DIR (`autoprune trials --json`).
# Run from the repository root, with autoprune importable (PYTHONPATH=.) and its dependencies installed
# (a GPU image without them takes them as wheels: BENCHMARKS.md, "GPUs", names the ones it lacked).
set -u
DEV=$1; OUT=$2; DATA=$3; T0=$(date +%s)
SPEC=bench/specs/gpu-resnet20.toml
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
stamp start; nvidia-smi -L 2>&1 | head -2
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
stamp "tests/test_device.py"
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_device.py -rs 2>&1 | tail -3
stamp "two workers on one GPU"
timeout 100 python3 -m autoprune search --device "$DEV" --jobs 2 --devices 0,0 --trials 6 \
    --storage "journal:$OUT/jobs.log" --json -q > "$OUT/jobs.json" 2> "$OUT/jobs.err"; echo "rc=$?"
stamp "ResNet-20, all of Fashion-MNIST: search"
timeout 160 python3 -m autoprune search "$SPEC" --data-dir "$DATA" --device "$DEV" \
    --storage "sqlite:///$OUT/r20.db" --json -q > "$OUT/r20_search.json" 2> "$OUT/r20_search.err"; echo "rc=$?"
stamp "finalize"
timeout 110 python3 -m autoprune finalize "$SPEC" --data-dir "$DATA" --device "$DEV" \
    --storage "sqlite:///$OUT/r20.db" --json -q > "$OUT/r20_final.json" 2> "$OUT/r20_final.err"; echo "rc=$?"
stamp "three trials on the CPU"
timeout 200 python3 -m autoprune search "$SPEC" --data-dir "$DATA" --device cpu --study gpu-resnet20-cpu \
    --trials 3 --storage "sqlite:///$OUT/cpu.db" --json -q > "$OUT/cpu.json" 2> "$OUT/cpu.err"; echo "rc=$?"
stamp end
