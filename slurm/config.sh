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
