#!/usr/bin/env bash
# Everything mpinet checks on the GPU machine, in one call (the device tool bills per machine
# start). Usage:  bash benchmarks/gpu_suite.sh SECTION...   (default: all)
#   tests      GPU-marked tests, 1 process, then the MPI+GPU tests on 2 ranks
#   conv       benchmarks/conv_bench.py (cuDNN path vs PyTorch, same process)
#   step       ResNet-18 32px batch 128 fp32/TF32 step, 1 GPU (eager and CUDA graph), beside torch_ddp_bench.py
#   profile    that step's kernels per step and GPU-busy vs wall, mpinet and torch (profile_step.py)
#   allreduce  busbw per size on all GPUs: mpinet nccl + hierarchical (2 emulated nodes) beside raw NCCL
#   single     ResNet-50 and VGG-16, bf16 b64 224px, 1 GPU: mpinet eager and --cuda-graph beside the
#              strongest anchors (PyTorch channels_last eager, torch.compile, compile reduce-overhead)
#   scale      ResNet-50, VGG-16 and AlexNet, 224px, batch 64/GPU, bf16, on 1, 2, 4 ... all GPUs,
#              beside DDP with channels_last and DDP with channels_last + torch.compile
#   nettransport  the inter-node path on one host: NCCL forced onto its network transport
#              (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1): allreduce busbw and ResNet-50 scaling
#   modes      DataParallel backward / forward / sync on all GPUs (which overlap is faster)
#   tune       cuDNN autotuning on/off and fp32 vs bf16, 1 GPU, beside the anchor
#   unet       U-Net on synthetic shapes-on-noise segmentation, IoU
#   fmnist     ResNet-18 (CIFAR stem) on Fashion-MNIST, 2 GPUs, to >= 93% test accuracy
#              (FMNIST_EXTRA=--cuda-graph to train with the step as a CUDA graph)
# Output goes to stdout (the device command saves it under $OUT). Carried paths: .whl (cudnn-frontend,
# ml_dtypes wheels) and .device (data). The anchors are benchmarks/anchors/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mpinet-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl .whl/opt/*.whl 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# CUPY_TF32 only for benchmarks and training (the anchors allow TF32); tests compare exactly.
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export CUPY_TF32=1
unset MPINET_EMULATE_NODES
MPIRUN="mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x PYTHONPATH -x CUPY_TF32 -x PYTHONUNBUFFERED -x OMP_NUM_THREADS"
ANCHOR=benchmarks/anchors
sections=${*:-tests conv step allreduce scale modes unet fmnist}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"

for s in $sections; do
  echo "=== $s"
  case $s in
  tests)
    export MPINET_TEST_MPIEXEC="mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x PYTHONPATH"
    CUPY_TF32=0 timeout 400 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1
    CUPY_TF32=0 timeout 200 $MPIRUN -n 2 python3 -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m "mpi and gpu" tests 2>&1
    ;;
  conv)
    timeout 300 python3 benchmarks/conv_bench.py 2>&1
    ;;
  step)  # alternating, 3 runs each: host-bound steps vary by tens of percent between seconds
    for i in 1 2 3; do
      timeout 100 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 --out "$OUT/step.jsonl" 2>&1
      timeout 100 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 --cuda-graph --out "$OUT/step.jsonl" 2>&1
      timeout 100 $MPIRUN -n 1 python3 $ANCHOR/torch_ddp_bench.py --model resnet18 --batch 128 --size 32 2>&1
    done
    ;;
  profile)  # kernels per step, GPU busy vs wall (launch-bound share), beside torch; .device/base
    # (if carried) is an older checkout timed in the same call as the baseline of a change.
    if [ -d .device/base ]; then
      timeout 200 $MPIRUN -n 1 python3 .device/base/benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 2>&1 | sed 's/^/base: /'
    fi
    timeout 200 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 --stem cifar 2>&1
    timeout 200 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 --stem imagenet --out "$OUT/step.jsonl" 2>&1
    timeout 200 $MPIRUN -n 1 python3 $ANCHOR/torch_ddp_bench.py --model resnet18 --batch 128 --size 32 2>&1 | grep torch-ddp
    timeout 200 python3 benchmarks/profile_step.py --framework mpinet --host 2>&1
    timeout 200 python3 benchmarks/profile_step.py --framework torch 2>&1
    ;;
  allreduce)
    gpus=$(nvidia-smi -L | wc -l)  # all GPUs; hierarchical as 2 emulated nodes of gpus/2 each
    timeout 200 $MPIRUN -n $gpus python3 $ANCHOR/nccl_allreduce_bw.py 2>&1
    timeout 300 $MPIRUN -n $gpus python3 benchmarks/allreduce_bw.py --impls nccl,hierarchical --emulate-nodes 2 2>&1
    ;;
  single)  # one GPU, one call: mpinet beside PyTorch as people run it for speed
    for m in resnet50 vgg16; do
      for graph in "" --cuda-graph; do
        timeout 200 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model $m --batch 64 --size 224 --precision bf16 --classes 1000 $graph --out "$OUT/single.jsonl" 2>&1
      done
      timeout 200 python3 $ANCHOR/torch_ddp_bench.py --no-ddp --channels-last --model $m --batch 64 --size 224 --amp bf16 --classes 1000 2>&1
      timeout 300 python3 $ANCHOR/torch_ddp_bench.py --no-ddp --channels-last --compile --model $m --batch 64 --size 224 --amp bf16 --classes 1000 2>&1
      timeout 300 python3 $ANCHOR/torch_ddp_bench.py --no-ddp --channels-last --compile --compile-mode reduce-overhead --model $m --batch 64 --size 224 --amp bf16 --classes 1000 2>&1
    done
    ;;
  scale)  # mpinet eager and with the step as a CUDA graph on 1, 2, 4 ... all GPUs (efficiency,
    # communication not hidden), then DDP channels_last (eager and compiled) on the same world
    # sizes. SCALE_MODELS picks models.
    gpus=$(nvidia-smi -L | wc -l)
    sizes=$(python3 -c "n=$gpus; print(*sorted({1, n} | {2**k for k in range(1, 8) if 2**k < n}))")
    for m in ${SCALE_MODELS:-resnet50 vgg16 alexnet}; do
      for graph in "" --cuda-graph; do
        timeout 400 python3 benchmarks/scaling.py --gpus $gpus --model $m --batch 64 --size 224 --precision bf16 --classes 1000 --steps 10 --repeats 3 $graph --mpirun "$MPIRUN" --out "$OUT/scale.jsonl" 2>&1
      done
      for n in $sizes; do
        timeout 300 $MPIRUN -n $n python3 $ANCHOR/torch_ddp_bench.py --channels-last --model $m --batch 64 --size 224 --amp bf16 --classes 1000 --steps 10 2>&1
        timeout 400 $MPIRUN -n $n python3 $ANCHOR/torch_ddp_bench.py --channels-last --compile --model $m --batch 64 --size 224 --amp bf16 --classes 1000 --steps 10 2>&1
      done
    done
    ;;
  nettransport)  # what NCCL does between nodes, on one host: no P2P, no shared memory
    gpus=$(nvidia-smi -L | wc -l)
    NET="$MPIRUN -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1"
    timeout 200 $NET -n $gpus python3 $ANCHOR/nccl_allreduce_bw.py 2>&1
    timeout 300 $NET -n $gpus python3 benchmarks/allreduce_bw.py --impls nccl,hierarchical --emulate-nodes 2 2>&1
    timeout 400 python3 benchmarks/scaling.py --gpus $gpus --model resnet50 --batch 64 --size 224 --precision bf16 --classes 1000 --steps 10 --repeats 3 --mpirun "$NET" --out "$OUT/scale-net.jsonl" 2>&1
    ;;
  modes)  # which overlap discipline is faster: DataParallel modes on all GPUs, ResNet-50 bf16
    gpus=$(nvidia-smi -L | wc -l)
    for mode in backward forward sync; do
      timeout 300 $MPIRUN -n $gpus python3 benchmarks/train_bench.py --model resnet50 --batch 64 --size 224 --precision bf16 --classes 1000 --dp-mode $mode --out "$OUT/modes.jsonl" 2>&1
    done
    ;;
  tune)  # cuDNN plan autotuning (MPINET_CUDNN_BENCHMARK=1, like torch's cudnn.benchmark) vs heuristics
    timeout 200 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 2>&1
    timeout 200 $MPIRUN -n 1 -x MPINET_CUDNN_BENCHMARK=1 python3 benchmarks/train_bench.py --model resnet18 --batch 128 --size 32 2>&1
    timeout 200 $MPIRUN -n 1 python3 $ANCHOR/torch_ddp_bench.py --model resnet18 --batch 128 --size 32 2>&1 | grep torch-ddp
    for m in resnet50 vgg16; do
      timeout 200 $MPIRUN -n 1 -x MPINET_CUDNN_BENCHMARK=1 python3 benchmarks/train_bench.py --model $m --batch 64 --size 224 --precision bf16 --classes 1000 2>&1
      timeout 200 $MPIRUN -n 1 python3 benchmarks/train_bench.py --model $m --batch 64 --size 224 --precision fp32 --classes 1000 2>&1
      timeout 200 $MPIRUN -n 1 python3 $ANCHOR/torch_ddp_bench.py --model $m --batch 64 --size 224 --amp bf16 --classes 1000 2>&1 | grep torch-ddp
    done
    ;;
  unet)
    timeout 300 python3 -m mpinet.train --model unet --dataset synthetic-segmentation \
      --model-opt base_width=16 --model-opt depth=3 --epochs ${UNET_EPOCHS:-20} --batch-size 32 \
      --optimizer adam --lr 0.002 --quiet 2>&1
    ;;
  fmnist)
    timeout 500 $MPIRUN -n 2 python3 -m mpinet.train --model resnet18 --dataset fashion-mnist \
      --data-dir .device/fashion-mnist --epochs ${FMNIST_EPOCHS:-8} --batch-size 128 --lr 0.1 --scale-lr \
      --schedule cosine --warmup-steps 100 --weight-decay 5e-4 --augment --precision bf16 \
      ${FMNIST_EXTRA:-} --quiet --metrics "$OUT/fmnist.jsonl" 2>&1
    ;;
  *) echo "unknown section $s"; exit 2 ;;
  esac
done
