"""Anchor: PyTorch DDP training throughput on synthetic data, one MPI rank per GPU.

Run beside mpinet's own benchmark in the same run on the GPU machine, same model and per-GPU batch:
  mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE=0 -n 2 \
      python3 benchmarks/anchors/torch_ddp_bench.py --model resnet18 --batch 128 --size 32
Prints one line per config: img/s over all GPUs and ms per step.
"""
import argparse, os, time
import torch, torch.distributed as dist, torchvision
from torch.nn.parallel import DistributedDataParallel as DDP

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet18")
p.add_argument("--batch", type=int, default=128, help="per GPU")
p.add_argument("--size", type=int, default=32, help="image height and width")
p.add_argument("--classes", type=int, default=10)
p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--warmup", type=int, default=10)
p.add_argument("--channels-last", action="store_true",
               help="NHWC memory format, what PyTorch's performance guide recommends for convnets")
p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up compiles)")
p.add_argument("--compile-mode", default=None,
               help="torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead (CUDA graphs)")
p.add_argument("--no-ddp", action="store_true", help="one process, no DDP wrapper (1-GPU anchor)")
a = p.parse_args()

rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", 0)))
world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", 1)))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29533")
torch.cuda.set_device(rank % torch.cuda.device_count())
dist.init_process_group("nccl", rank=rank, world_size=world)
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True

fmt = torch.channels_last if a.channels_last else torch.contiguous_format
m = getattr(torchvision.models, a.model)(num_classes=a.classes).cuda().to(memory_format=fmt)
if not a.no_ddp:
    m = DDP(m, device_ids=[torch.cuda.current_device()])
if a.compile or a.compile_mode:
    m = torch.compile(m, mode=a.compile_mode)
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(a.batch, 3, a.size, a.size, device="cuda").to(memory_format=fmt)
y = torch.randint(0, a.classes, (a.batch,), device="cuda")
dt_amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)

def step():
    with torch.autocast("cuda", dtype=dt_amp or torch.float32, enabled=dt_amp is not None):
        loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

for _ in range(a.warmup): step()
torch.cuda.synchronize(); dist.barrier(); t = time.perf_counter()
for _ in range(a.steps): step()
torch.cuda.synchronize(); dt = time.perf_counter() - t
if rank == 0:
    print(f"torch-ddp {a.model} batch {a.batch}/gpu {a.size}px amp={a.amp} gpus={world}: "
          f"{'channels_last ' if a.channels_last else ''}{'compiled' + ('/' + a.compile_mode if a.compile_mode else '') + ' ' if a.compile or a.compile_mode else ''}{'no-ddp ' if a.no_ddp else ''}"
          f"{a.batch * world * a.steps / dt:.0f} img/s, {dt / a.steps * 1e3:.2f} ms/step")
dist.destroy_process_group()
