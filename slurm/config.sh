# Site values for the slurm/ scripts: the ONLY file to edit for a new cluster.
# Sourced by slurm/submit.sh (at submission) and by the batch scripts (inside the job).
# Every value can also be set from the environment for one submission, e.g.
#   MPINET_SLURM_GPUS=0 MPINET_SLURM_TASKS_PER_NODE=2 slurm/submit.sh slurm/train_1node.sbatch

# Partition (-p) and account (-A); empty: the cluster's defaults.
: "${MPINET_SLURM_PARTITION:=}"
: "${MPINET_SLURM_ACCOUNT:=}"
# Quality of service (--qos); empty: default.
: "${MPINET_SLURM_QOS:=}"

# GPUs per node. One task (rank) per GPU. 0: CPU-only nodes.
: "${MPINET_SLURM_GPUS:=8}"
# Ranks per node; empty: one per GPU, or 2 on CPU-only nodes.
: "${MPINET_SLURM_TASKS_PER_NODE:=}"
# CPU cores per rank (data loading threads, BLAS on CPU); empty: 8 with GPUs, 1 without.
: "${MPINET_SLURM_CPUS_PER_TASK:=}"

# srun's PMI plugin: pmix (Open MPI, e.g. Debian's), pmi2 (MPICH, e.g. the PyPI mpich wheel),
# or auto: chosen from the MPI library mpi4py loads. `srun --mpi=list` shows what the site has.
: "${MPINET_SLURM_MPI:=auto}"

# The Python environment inside the job: a virtualenv directory to activate (its bin/activate);
# empty: use the environment sbatch was called from (sbatch exports it by default).
: "${MPINET_PYTHON_ENV:=}"
# Shell commands run in the job before launching, e.g. "module load cuda/13.0"; empty: none.
: "${MPINET_SLURM_SETUP:=}"

# --- The cluster's network: which interfaces and adapters NCCL, UCX and libfabric use. ---
# Empty: the library chooses by itself (usually right on a cluster with one fast network).
# Set here, each is exported to every rank (sbatch and srun pass the environment on).
# `python -m mpinet.comm.check` (or `mpinet.train --preflight`) shows each host's interfaces and
# the allreduce bandwidth you get, so a wrong choice shows up before a long run.
#
# NCCL_SOCKET_IFNAME: interfaces for NCCL's bootstrap and its socket transport (prefix match;
# "^" excludes), e.g. "ib0", "eth0,eth1" or "^lo,docker". Set it when hosts have several
# networks and NCCL picks a slow or unroutable one (a hang at the first allreduce).
: "${NCCL_SOCKET_IFNAME:=}"
# NCCL_IB_HCA: InfiniBand/RoCE adapters (and ports) NCCL's IB transport uses, e.g.
# "mlx5_0:1,mlx5_1:1" ("=" for an exact match, "^" excludes). Empty: all that are up.
: "${NCCL_IB_HCA:=}"
# UCX_NET_DEVICES: devices UCX uses (Open MPI's pml ucx, MPICH's ch4:ucx), e.g. "mlx5_0:1" or
# "eth0". Empty: all.
: "${UCX_NET_DEVICES:=}"
# FI_TCP_IFACE: the interface libfabric's tcp provider uses (MPICH's ch4:ofi with FI_PROVIDER=tcp),
# e.g. "eth0".
: "${FI_TCP_IFACE:=}"
# PMIx (MPINET_SLURM_MPI=pmix, Open MPI under srun): PMIx's own MCA variables, passed to every
# rank. PMIX_MCA_gds=hash picks PMIx's plain hash store instead of its shared-memory stores (the
# usual workaround when the client library and Slurm's PMIx disagree about them);
# PMIX_MCA_psec=native picks its native security plugin. Empty: PMIx's defaults.
: "${PMIX_MCA_gds:=}"
: "${PMIX_MCA_psec:=}"
for _mpinet_var in NCCL_SOCKET_IFNAME NCCL_IB_HCA UCX_NET_DEVICES FI_TCP_IFACE PMIX_MCA_gds \
                   PMIX_MCA_psec; do
  if [ -n "${!_mpinet_var}" ]; then export "${_mpinet_var?}"; else unset "$_mpinet_var"; fi
done
unset _mpinet_var
