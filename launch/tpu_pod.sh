#!/usr/bin/env bash
# Cloud TPU VM pod: create the slice (queued resource), install this repo on every worker,
# run the same `python -m pretrain.main` on all workers, and start again after preemption.
#
#   PROJECT=my-proj ZONE=us-east5-a TPU_NAME=pretrain ACCELERATOR=v5p-32 \
#   RUNTIME=v2-alpha-tpuv5 BUCKET=my-bucket \
#   launch/tpu_pod.sh run --config=configs/gpt.py:small --config.mesh.fsdp=-1
#
# Subcommands: create | install | train | run (create+install+train, restarts) | delete.
# The workdir (default /gcs/$BUCKET/runs/$TPU_NAME, a gcsfuse mount of gs://$BUCKET on every
# worker) outlives the VMs, so every (re)start resumes from its latest checkpoint.
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU_NAME:?set TPU_NAME}"
: "${ACCELERATOR:=v5p-32}" "${RUNTIME:=v2-alpha-tpuv5}" "${SPOT:=1}" "${MAX_RESTARTS:=20}"
: "${BUCKET:?set BUCKET (gs://BUCKET holds the workdir)}"
: "${WORKDIR:=/gcs/$BUCKET/runs/$TPU_NAME}"
REPO_DIR=pretrain
GCLOUD=(gcloud --project="$PROJECT")
TPU=("${GCLOUD[@]}" compute tpus tpu-vm)
QR=("${GCLOUD[@]}" compute tpus queued-resources)

on_all() {  # Runs a command on every worker of the slice at once.
  "${TPU[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

state() {  # ACTIVE when the slice is up; empty when it does not exist.
  "${QR[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state.state)' 2>/dev/null || true
}

create() {
  local spot=()
  [[ "$SPOT" == 1 ]] && spot=(--spot)
  "${QR[@]}" create "$TPU_NAME" --zone="$ZONE" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}"
  until [[ "$(state)" == ACTIVE ]]; do
    case "$(state)" in FAILED|SUSPENDED|"") echo "queued resource: $(state)" >&2; return 1;; esac
    sleep 30
  done
}

delete() {
  "${QR[@]}" delete "$TPU_NAME" --zone="$ZONE" --force --quiet || true
}

install() {  # The committed tree (git archive), the pinned stack with jax[tpu], gcsfuse.
  git archive --format=tar.gz -o /tmp/pretrain.tar.gz HEAD
  "${TPU[@]}" scp /tmp/pretrain.tar.gz "$TPU_NAME:" --zone="$ZONE" --worker=all
  on_all "set -e; rm -rf $REPO_DIR && mkdir $REPO_DIR && tar -xzf pretrain.tar.gz -C $REPO_DIR
    cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -c requirements.lock -e '.[tpu]'
    if ! command -v gcsfuse >/dev/null; then
      echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
      curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
    fi
    sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET
    mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET"
}

train() {  # Same command on every worker; jax detects the pod (--distributed=auto).
  local args=""
  (($#)) && args=$(printf ' %q' "$@")
  # A trainer left over from a dropped ssh session would hold the TPU: stop it first.
  on_all "cd $REPO_DIR && { [[ -f train.pid ]] && kill \$(cat train.pid) 2>/dev/null; sleep 5;
    echo \$\$ > train.pid; exec .venv/bin/python -m pretrain.main --distributed=auto \
    --workdir=$WORKDIR$args; }"
}

run() {  # Train until it succeeds; after a failure recreate the slice if it is gone.
  local attempt now
  for ((attempt = 0; attempt <= MAX_RESTARTS; attempt++)); do
    if [[ "$(state)" != ACTIVE ]]; then
      delete
      create || { sleep 60; continue; }
      install || { echo "install failed; retrying" >&2; continue; }
    fi
    if train "$@"; then
      echo "training finished; workdir $WORKDIR"
      return 0
    fi
    now=$(state)
    echo "attempt $attempt failed (slice state: ${now:-gone}); resuming" >&2
  done
  echo "gave up after $MAX_RESTARTS restarts" >&2
  return 1
}

command=${1:?usage: launch/tpu_pod.sh create|install|train|run|delete [pretrain.main args]}
shift
case "$command" in
  create|install|delete) "$command" ;;
  train|run) "$command" "$@" ;;
  *) echo "unknown subcommand $command; valid: create install train run delete" >&2; exit 2 ;;
esac
