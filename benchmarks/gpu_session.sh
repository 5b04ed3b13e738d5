#!/usr/bin/env bash
# One prepared GPU session (issues #11 and #12), run from the repository root on a machine with CUDA:
#   OUT=results_dir bash benchmarks/gpu_session.sh            # DEVICE=cpu QUICK=1 to exercise it on a CPU
#   STEPS="gpu_check profile cuda_tests" ...                   # a run can name fewer steps
# 0. Python's bytecode cached (PYTHONPYCACHEPREFIX) as an installed package has it, the machine's settings printed
# 1. benchmarks/gpu_check.py: the 1 mm MNI demo pair, per-stage seconds (synchronised), call and whole-CLI time
#    (then benchmarks/gpu_profile.py: where those seconds go, start-up included, under cProfile and torch.profiler;
#    its tables come back as profile.tar.gz)
# 2. the CUDA-parametrised tests (register, apply, batch, training, device residency), before the profile:
#    a step that runs out of its time costs only itself
# 3. the batched torch synthesizer's pairs/s on the device
# 4. a training check: experiments/train_3d.yaml from scratch, batch 8, TRAIN_MIN minutes, validation on the device
# 5. --resume on the device: the shipped model's stage-3 checkpoint (with its Adam state, FT_CKPT) continued
#    at batch 8 for FT_MIN minutes (experiments/train_3d_stage3.yaml), checkpoint written before validation.
# Every step has its own time limit and writes its log under $OUT, so a step that fails or hangs costs only itself.
# Where .devcarry/ exists (the device machine has no PyPI): nibabel/isal wheels, SimpleITK as .tar.xz, and the MNI
# template files of nilearn's wheel are unpacked first.  Made on the CPU machine (ignored by git; < 64 MiB with the tree):
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64"
#   pip download $P -d .devcarry/whl nibabel==5.4.2 isal==1.9.1 importlib-resources
#   pip download $P -d /tmp/w SimpleITK==2.5.3 nilearn==0.14.1; (cd /tmp/w && unzip -q simpleitk-*.whl 'SimpleITK/*' \
#     && tar cf - SimpleITK | xz -9 -T2 > $OLDPWD/.devcarry/sitk.tar.xz && unzip -q nilearn-*.whl)
#   mkdir -p .devcarry/nilearn_slim/nilearn/datasets/data; echo '__version__ = "0.14.1"' > .devcarry/nilearn_slim/nilearn/__init__.py
#   cp /tmp/w/nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz .devcarry/nilearn_slim/nilearn/datasets/data/
#   cp <checkpoint with optimiser state> .devcarry/stage3_opt.pt       # for the resume step (optional)
set -u
OUT=${OUT:-/tmp/gpu_session}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
TRAIN_MIN=${TRAIN_MIN:-1.0}
FT_MIN=${FT_MIN:-2.5}
FT_CKPT=${FT_CKPT:-.devcarry/stage3_opt.pt}
STEPS=${STEPS:-gpu_check profile cuda_tests synth_speed train_check finetune}  # a rerun can name fewer
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -d .devcarry ] && ! $PY -c "import nibabel, SimpleITK" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devcarry/whl/*.whl || exit 1
  tar -xJf .devcarry/sitk.tar.xz -C /tmp/site || exit 1
  cp -r .devcarry/nilearn_slim/nilearn /tmp/site/ || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
# What the machine's Python does with bytecode, then the bytecode cached as an installed package has it
# (pip writes .pyc at install time; a checkout copied here, or PYTHONDONTWRITEBYTECODE, would make every
# fresh process compile its imports again: seconds of start-up that a user's install does not pay).
$PY - <<'PYEOF' 2>&1 | tee "$OUT/bytecode.txt"
import os, sys, glob
import torch
d = os.path.dirname(torch.__file__)
print("PYTHONDONTWRITEBYTECODE:", os.environ.get("PYTHONDONTWRITEBYTECODE"), "sys.flags.dont_write_bytecode:",
      sys.flags.dont_write_bytecode, "PYTHONPYCACHEPREFIX:", os.environ.get("PYTHONPYCACHEPREFIX"))
print("torch at", d, "writable:", os.access(d, os.W_OK), ".pyc in torch/__pycache__:",
      len(glob.glob(os.path.join(d, "__pycache__", "*.pyc"))))
PYEOF
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/unireg_pycache}
$PY -c "import unireg.api, unireg.cli.main, unireg.outputs; from unireg.outputs import prefetch_report_modules; prefetch_report_modules(); import unireg.reports.html, unireg.reports.qc" \
  && echo "bytecode cached under $PYTHONPYCACHEPREFIX"
{ date; nvidia-smi -L 2>/dev/null; $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"; nproc; } 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name (limit ${secs}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name rc=$rc wall=$((SECONDS - t0))s"
}

Q=(); [ "$QUICK" = 1 ] && Q=(--quick)
step gpu_check 170 $PY benchmarks/gpu_check.py --device "$DEVICE" "${Q[@]}"
step cuda_tests 200 $PY -m pytest -q -p no:cacheprovider -o addopts="" -k "cuda or on_a_device or on_device or on_the_model_device or before_validation" \
  tests/cli/test_cli.py tests/stages/test_device_residency.py tests/training/test_trainer_device.py tests/test_warmup.py
step profile 240 $PY benchmarks/gpu_profile.py --device "$DEVICE" --out "$OUT/profile" "${Q[@]}"
step synth_speed 60 $PY experiments/synth_speed.py --ndim 3 --crop 48 48 48 --batch 8 --batches 5 --threads 1 --device "$DEVICE" --skip-old
step train_check $(python3 -c "print(int(60 * $TRAIN_MIN + 60))") $PY -m unireg.training --config experiments/train_3d.yaml \
  --device "$DEVICE" --batch-size 8 --time-limit-min "$TRAIN_MIN" --log-every 25 --checkpoint-every 500 --out /tmp/train_check.pt
if [ -f "$FT_CKPT" ] && [[ " $STEPS " == *" finetune "* ]]; then
  cp "$FT_CKPT" "$OUT/unireg_3d_gpu_ft.pt"
  step finetune $(python3 -c "print(int(60 * $FT_MIN + 75))") $PY -m unireg.training --config experiments/train_3d_stage3.yaml \
    --device "$DEVICE" --batch-size 8 --time-limit-min "$FT_MIN" --log-every 50 --checkpoint-every 200 --seed 5 \
    --resume --out "$OUT/unireg_3d_gpu_ft.pt"
fi
# the device tool brings back a handful of files: the profile's tables travel as one archive
[ -d "$OUT/profile" ] && tar -C "$OUT" --exclude=trace.json -czf "$OUT/profile.tar.gz" profile && rm -rf "$OUT/profile"
echo "=== done $(date +%T)"
