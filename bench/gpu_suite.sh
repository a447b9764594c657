#!/usr/bin/env bash
# The GPU benchmarks of issue 12 in one run of at most 7 1/2 minutes on one H100/H200 (each part has its own
# timeout, 450 s in all; prepared on a CPU machine; see bench/README.md "GPU" for the figures it produced, if any):
#   1. the MM-DINOv2 train step at the paper's shapes (batch 64, 4 sequences, 2x98 + 8x56 crops), ViT-S/14
#      and ViT-B/14, JAX in bf16 (model.dtype auto, cuDNN flash attention) against the PyTorch reference
#      step in bf16 autocast with torch.compile (each block and head compiled, which takes a fraction of the
#      whole backbone's compile time), interleaved; samples/s and MFU against the bf16 dense peak;
#      the JAX step makes its crops on the GPU, as training there does (data.augment_on auto), PyTorch gets crops;
#   2. the input pipeline with 8 workers, crops on the host and on the device, against the fastest step rate;
#   3. attention alone, JAX cuDNN / XLA against PyTorch SDPA, at the step's shapes.
# Tables go to $OUT (default bench/gpu_out). Before, where pip works: bash bench/gpu_wheels.sh, then carry
# `.whl` along (grain, ml-collections and nibabel are installed from it offline if missing).
#   OUT=/some/dir bash bench/gpu_suite.sh          PEAK_TFLOPS=989 (H100/H200 SXM bf16 dense)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu_out}
peak=${PEAK_TFLOPS:-989}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}  # leave room for PyTorch
if ! python3 -c "import grain, ml_collections, nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/gpu_site
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__)"
  echo "CPUs: $(nproc)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

step() {  # config, timeout s, name
  timeout "$2" python3 bench/bench_step.py --config "$1" --steps 10 --pause 0 --crops-on-device --gemm --torch \
    --torch-device cuda --torch-dtype bfloat16 --torch-compile regional --peak-tflops "$peak" \
    --json "$out/step_$3.json" 2>&1 | tee "$out/step_$3.md"
}
step configs/mmdino_vits14.py 150 vits14
step configs/mmdino_vitb14.py 180 vitb14

rate=$(python3 -c "import glob, json; print(max(r['samples_per_s'] for f in glob.glob('$out/step_*.json')
                                                 for r in json.load(open(f))))" 2>/dev/null || echo 900)
timeout 90 python3 bench/bench_pipeline.py --subjects 12 --batch-size 64 --batches 16 --naive-samples 8 \
  --workers "$(( $(nproc) < 8 ? $(nproc) : 8 ))" --target "$rate" --out "$out/pipeline.md" 2>&1 | tail -n 20

timeout 30 python3 bench/bench_attention.py --dtype bfloat16 --wall --shape 128,197,6,64 --shape 512,65,6,64 \
  --shape 128,197,12,64 --shape 512,65,12,64 2>&1 | tee "$out/attention.md"
ls -l "$out"
