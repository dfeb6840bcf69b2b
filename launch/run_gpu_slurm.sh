#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one JAX process per GPU (default) or per node.
#
#   cd /path/to/mkd_jax && sbatch [sbatch options] launch/run_gpu_slurm.sh CONFIG WORKDIR [FLAGS...]
#
# srun starts the processes; each runs `python -m mkd_jax.train` with MKD_JAX_DISTRIBUTED=1, so
# train.py calls jax.distributed.initialize() with no arguments. jax 0.10.2 then reads
# JAX_COORDINATOR_ADDRESS (set below) and detects the rest from srun's variables: process count
# from SLURM_NTASKS, process id from SLURM_PROCID, and the one GPU a process drives from
# SLURM_LOCALID (it sets local_device_ids=[SLURM_LOCALID]). There is no JAX_NUM_PROCESSES or
# JAX_PROCESS_ID variable in jax 0.10.2. With one process per node, JAX_LOCAL_DEVICE_IDS below
# overrides that single-GPU default so the process drives every GPU of its node.
#
#SBATCH --job-name=mkd_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=mkd_jax-%j.out
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: sbatch [sbatch options] launch/run_gpu_slurm.sh CONFIG WORKDIR [TRAIN_FLAGS...]

  Submit from the repository root (or set MKD_JAX_REPO). CONFIG is relative to it, WORKDIR
  must be one folder every node sees (shared filesystem); rerun with the same one to resume.
  One process per GPU by default (--ntasks-per-node equal to --gpus-per-node); for one
  process per node pass --ntasks-per-node=1.

environment:
  MKD_JAX_REPO     repository root (default: the directory sbatch was run from)
  MKD_JAX_PYTHON   Python with mkd_jax and jax[cuda12]==0.10.2 installed
                   (default: $MKD_JAX_REPO/.venv/bin/python)
  MKD_JAX_PORT     coordinator port (default: 20000 + job id mod 20000)
  MKD_JAX_DRY_RUN  1: print the srun command instead of running it
EOF
  exit 2
}

[[ $# -ge 2 && $1 != -* ]] || usage
if [[ -z ${SLURM_JOB_ID:-} || -z ${SLURM_JOB_NODELIST:-} ]]; then
  echo "run_gpu_slurm.sh: not inside a SLURM allocation; submit it with sbatch" >&2
  usage
fi
config=$1 workdir=$2
shift 2

repo=${MKD_JAX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
python=${MKD_JAX_PYTHON:-$repo/.venv/bin/python}
if [[ ! -f $repo/mkd_jax/train.py ]]; then
  echo "run_gpu_slurm.sh: $repo is not the mkd_jax repository; submit from its root or set" \
    "MKD_JAX_REPO" >&2
  exit 2
fi
if [[ ! -f $repo/$config ]]; then
  echo "run_gpu_slurm.sh: CONFIG $config not found under $repo" >&2
  exit 2
fi
if [[ ! -x $python ]]; then
  echo "run_gpu_slurm.sh: no Python at $python; set MKD_JAX_PYTHON" >&2
  exit 2
fi

# The coordinator is process 0, which srun places on the first node of the allocation.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${MKD_JAX_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export JAX_COORDINATOR_ADDRESS=$head_node:$port
export MKD_JAX_DISTRIBUTED=1

tasks_per_node=${SLURM_NTASKS_PER_NODE:-$((${SLURM_NTASKS:-1} / SLURM_JOB_NUM_NODES))}
gpus_per_node=${SLURM_GPUS_ON_NODE:-}
if [[ -z $gpus_per_node ]]; then
  command -v nvidia-smi >/dev/null || { echo "run_gpu_slurm.sh: no GPUs allocated" \
    "(SLURM_GPUS_ON_NODE unset, no nvidia-smi); pass --gpus-per-node" >&2; exit 2; }
  gpus_per_node=$(nvidia-smi -L | wc -l)
fi
if ((tasks_per_node == 1 && gpus_per_node > 1)); then
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus_per_node - 1)))
  export JAX_LOCAL_DEVICE_IDS
elif ((tasks_per_node != gpus_per_node)); then
  echo "run_gpu_slurm.sh: $tasks_per_node tasks but $gpus_per_node GPUs per node; use one" \
    "task per GPU or one per node" >&2
  exit 2
fi
echo "mkd_jax: $((tasks_per_node * SLURM_JOB_NUM_NODES)) processes on $SLURM_JOB_NUM_NODES nodes" \
  "($gpus_per_node GPUs each), coordinator $JAX_COORDINATOR_ADDRESS" >&2

cd "$repo"
# --gpu-bind=none: each process must see all GPUs of its node, since JAX picks its own GPU by
# SLURM_LOCALID; a per-task binding would leave it one GPU, numbered 0.
cmd=(srun --kill-on-bad-exit=1 --gpu-bind=none "$python" -m mkd_jax.train --config "$config"
  --workdir "$workdir" "$@")
if [[ ${MKD_JAX_DRY_RUN:-0} == 1 ]]; then
  env | grep -E '^(JAX_|MKD_JAX_DISTRIBUTED)' | sort
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi
