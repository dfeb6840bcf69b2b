#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice: copy this checkout to each worker, install it
# with the `tpu` extra into a virtualenv there, then start `python -m mkd_jax.train` on all
# workers at once with MKD_JAX_DISTRIBUTED=1. On a TPU VM, jax.distributed.initialize() finds
# the coordinator, process count and process id from the TPU metadata, so nothing else is set.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/run_tpu.sh [options] TPU_NAME ZONE CONFIG WORKDIR [TRAIN_FLAGS...]

  TPU_NAME      an existing TPU VM (gcloud compute tpus tpu-vm create ...)
  ZONE          its zone, e.g. us-west4-a
  CONFIG        config file, relative to the repository root, e.g. configs/paper_large_v2.py
  WORKDIR       run folder on the workers; rerun with the same one to resume. With more than
                one worker it must be the same shared folder on all of them (e.g. a gcsfuse or
                Filestore mount), since checkpoints are written by all processes together.
  TRAIN_FLAGS   passed on to mkd_jax.train, e.g. --config.total_steps=100

options:
  --project P     gcloud project (default: gcloud's configured project)
  --no-install    skip copying and installing (the workers already have this checkout)
  --python PY     Python (>= 3.11) on the workers for the virtualenv (default: python3)
  --dry-run       print the gcloud commands instead of running them
  -h, --help      this text
EOF
  exit 2
}

project=() install=1 python=python3 dry_run=0
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    --project) [[ $# -ge 2 ]] || usage; project=(--project "$2"); shift 2 ;;
    --no-install) install=0; shift ;;
    --python) [[ $# -ge 2 ]] || usage; python=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage ;;
    *) echo "run_tpu.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -ge 4 ]] || usage
name=$1 zone=$2 config=$3 workdir=$4
shift 4

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ! -f $repo/$config ]]; then
  echo "run_tpu.sh: CONFIG $config not found under $repo (give it relative to the repo root)" >&2
  exit 2
fi
if [[ $workdir == gs://* ]]; then
  # mkd_jax.train writes metrics, reports and TensorBoard files with local file I/O.
  echo "run_tpu.sh: WORKDIR $workdir: mount the bucket on every worker (gcsfuse) and pass the" \
    "mount path instead" >&2
  exit 2
fi

# Expanded by the workers' shell, not this one.
remote_dir='"$HOME/mkd_jax"'
remote_venv='"$HOME/mkd_jax_venv"'

run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project[@]}" --worker=all \
    --command "$1"
}

if ((install)); then
  tarball=$(mktemp -t mkd_jax_src.XXXXXX.tgz)
  trap 'rm -f "$tarball"' EXIT
  tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=.venv --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=./results .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:mkd_jax_src.tgz" --zone "$zone" \
    "${project[@]}" --worker=all
  ssh_all "set -euo pipefail
$(printf '%q' "$python") -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo \"\$(hostname): $python is older than 3.11; pass --python\" >&2; exit 1; }
rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf \"\$HOME/mkd_jax_src.tgz\" -C $remote_dir
[ -x $remote_venv/bin/python ] || $(printf '%q' "$python") -m venv $remote_venv
$remote_venv/bin/pip install -q -e $remote_dir'[tpu]'"
fi

train_args=(-m mkd_jax.train --config "$config" --workdir "$workdir" "$@")
ssh_all "set -euo pipefail
cd $remote_dir
MKD_JAX_DISTRIBUTED=1 exec $remote_venv/bin/python $(printf '%q ' "${train_args[@]}")"
