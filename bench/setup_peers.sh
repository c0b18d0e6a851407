#!/usr/bin/env bash
# Build the peer servers' virtualenvs under bench/.peers/ (git-ignored) from PyPI.
# Idempotent: a venv whose stamp matches its requirements is left alone.
#   bench/setup_peers.sh [fastapi] [mlserver] [triton]     (default: all three)
# Exit status is 0 when every requested peer is ready; a failed peer leaves a
# bench/.peers/<name>.failed file whose text the benchmark reports.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="${BENCH_PEERS_DIR:-$HERE/.peers}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$PEERS"

declare -A REQS=(
  [fastapi]="fastapi==0.115.* uvicorn[standard]==0.32.* orjson numpy==2.*"
  [mlserver]="mlserver==1.7.1 uvloop==0.21.0 pandas==2.2.3"
  [triton]="nvidia-pytriton==0.7.0 numpy<2"
)

# Triton: a copy of pytriton's tritonserver/ folder with the python backend stub for this
# interpreter's version in backends/python/ (bench/targets.py runs the binary from there).
post_install() {
  local name="$1" venv="$2"
  [[ "$name" == triton ]] || return 0
  local pyver src dst
  pyver="$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  src="$("$venv/bin/python" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"
  dst="$venv/tritonserver"
  rm -rf "$dst" && cp -r "$src" "$dst" \
    && cp "$src/python_backend_stubs/$pyver/triton_python_backend_stub" "$dst/backends/python/" \
    && chmod +x "$dst/backends/python/triton_python_backend_stub" "$dst/bin/tritonserver"
}

setup_one() {
  local name="$1" reqs="${REQS[$1]}" venv="$PEERS/$1"
  local stamp="$venv/.bench-stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$reqs" ]]; then
    rm -f "$PEERS/$name.failed"; echo "[setup] $name: up to date"; return 0
  fi
  echo "[setup] $name: installing $reqs"
  rm -rf "$venv" "$PEERS/$name.failed"
  local log="$PEERS/$name.log"
  # shellcheck disable=SC2086
  if "$PYTHON" -m venv "$venv" >"$log" 2>&1 \
     && "$venv/bin/pip" install --quiet --upgrade pip >>"$log" 2>&1 \
     && "$venv/bin/pip" install $reqs >>"$log" 2>&1; then
    if ! post_install "$name" "$venv" >>"$log" 2>&1; then
      echo "post-install step failed: $(tail -n 3 "$log" | tr '\n' ' ')" >"$PEERS/$name.failed"
      echo "[setup] $name: FAILED, see $log"; return 1
    fi
    echo "$reqs" >"$stamp"
    echo "[setup] $name: ok"
  else
    { echo "pip install failed ($reqs): $(tail -n 3 "$log" | tr '\n' ' ')"; } >"$PEERS/$name.failed"
    echo "[setup] $name: FAILED, see $log"; return 1
  fi
}

names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=(fastapi mlserver triton)
status=0
for n in "${names[@]}"; do
  if [[ -z "${REQS[$n]+x}" ]]; then echo "[setup] unknown peer: $n"; status=1; continue; fi
  setup_one "$n" || status=1
done
exit $status
