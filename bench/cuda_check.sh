#!/usr/bin/env bash
# The CUDA path on one GPU, in one prepared run: what a GPU session checks and records.
#
#   bash bench/cuda_check.sh OUT [PART ...]      # parts: env torchrun demo use train generate (default: all)
#
# - env: the GPU, torch, transformers;
# - torchrun: `torchrun --nproc_per_node 1 -m lmforge run` of the demo's pretraining (60 steps), once with
#   DDP and once with FSDP2, both under torch.compile and bf16 autocast (NCCL, the compiled model, checkpoints);
# - demo: every stage of `recipes/demo.yaml` on the GPU (train.device auto picks cuda): its report, and
#   the mean seconds of GRPO's sampling, rollouts and steps;
# - use (after demo): `lmforge eval` and `lmforge chat -p` on the GPU with the demo's models, and the
#   generation benchmark on its GRPO model (export, transformers on the GPU, identical greedy outputs);
# - train: bench/train_throughput.py --compile at ~150M parameters (lmforge vs transformers, MFU);
# - generate: bench/generate_throughput.py on the GPU (engine vs transformers generate, eager and compiled).
#
# Each part has its own time limit (seconds) so that one hang cannot eat the GPU's time; the whole
# log goes to OUT/log.txt and the demo's report, summary and hardware record beside it.
# Runs from the repository root without installing lmforge (PYTHONPATH=.), with the Python that
# holds a CUDA build of torch (PYTHON, default python3). TINY=1 shrinks every size (a CPU smoke test
# of this script).
set -u
OUT=${1:?usage: bash bench/cuda_check.sh OUT [env torchrun demo use train generate]}
shift
PARTS=${*:-env torchrun demo use train generate}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/lmforge_cuda_check}
DEVICE=${DEVICE:-cuda}  # the benchmarks' device (the stages pick cuda themselves where there is one)
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"

if [ "${TINY:-0}" = 1 ]; then
  SMALL=$($PY -c "from tests.tiny_recipe import BASE; print(' '.join(BASE))")
  PRE_STEPS=4 DEMO_ARGS="$SMALL stages=[toyworld,curate,tokenizer,pretrain,eval_base,sft,eval_sft]"
  TRAIN_ARGS="--d-model 64 --layers 2 --heads 2 --kv-heads 2 --vocab 512 --batch 2 --seq 64 --steps 2"
  GEN_ARGS="--d-model 64 --layers 2 --heads 2 --kv-heads 2 --new-tokens 8 --repeats 1"
  BIG_GEN_ARGS=$GEN_ARGS LAST=sft  # the tiny demo stops after SFT
else
  PRE_STEPS=60 DEMO_ARGS=""
  TRAIN_ARGS="--d-model 1024 --layers 12 --heads 16 --kv-heads 16 --vocab 32768 --batch 16 --seq 1024 --steps 10"
  GEN_ARGS="--repeats 5"
  BIG_GEN_ARGS="--d-model 1024 --layers 12 --heads 16 --kv-heads 16 --vocab 32768 --batch 32 --repeats 3"
  LAST=grpo
fi

part() {  # part NAME LIMIT_S COMMAND...: runs it with a time limit, logs its output and its time
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

wants() { [[ " $PARTS " == *" $1 "* ]]; }

if wants env; then
  part nvidia-smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  part versions 60 $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '');
print('transformers', transformers.__version__)"
fi

if wants torchrun; then
  for parallel in ddp fsdp2; do
    part "torchrun-$parallel" 150 $PY -m torch.distributed.run --nproc_per_node 1 --master_port 29517 -m lmforge run \
      recipes/demo.yaml out_dir="$WORK" name="torchrun_$parallel" $DEMO_ARGS \
      "stages=[toyworld,curate,tokenizer,pretrain]" train.steps=$PRE_STEPS train.parallel=$parallel \
      train.compile=true train.ckpt_every=$((PRE_STEPS / 2)) train.progress=false
    tail -n 3 "$WORK/torchrun_$parallel/pretrain/metrics.jsonl" >>"$LOG" 2>/dev/null
  done
fi

if wants demo; then
  part demo 330 $PY -m lmforge run recipes/demo.yaml out_dir="$WORK" name=demo $DEMO_ARGS
  for f in report.md summary.json hardware.json; do cp "$WORK/demo/$f" "$OUT/demo_$f" 2>/dev/null; done
  # where GRPO's steps go on this device: sampling, the whole rollout batch, the whole step (mean s)
  $PY -c "import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]; r = [x for x in r if 'rollout_s' in x]
print('grpo mean seconds a step:', {k: round(sum(x[k] for x in r) / max(len(r), 1), 3) for k in ('generate_s', 'rollout_s', 'step_time_s')})" \
    "$WORK/demo/grpo/metrics.jsonl" >>"$LOG" 2>&1
fi

if wants use; then
  part eval 120 $PY -m lmforge eval "$WORK/demo/sft/model" --tasks toyworld --limit 200 --chat --device $DEVICE \
    --dtype bfloat16 --out "$WORK/eval_sft" --no-progress
  part chat 60 $PY -m lmforge chat "$WORK/demo/$LAST/model" -p "What is 12 + 30?" --device $DEVICE
  part generate_demo_model 120 $PY bench/generate_throughput.py --device $DEVICE --compile \
    --checkpoint "$WORK/demo/$LAST/model" $GEN_ARGS
fi

if wants train; then
  part train_throughput 150 $PY bench/train_throughput.py --device $DEVICE --compile $TRAIN_ARGS
fi

if wants generate; then
  part generate_small 120 $PY bench/generate_throughput.py --device $DEVICE --compile $GEN_ARGS
  part generate_big 120 $PY bench/generate_throughput.py --device $DEVICE --compile $BIG_GEN_ARGS
fi
