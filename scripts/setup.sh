#!/usr/bin/env bash
# Installs everything ftrain needs on a Debian 12 machine, then returns quickly when
# nothing is missing. Debian packages come from apt-get; the Python environment that
# holds the PyPI torch wheel (whose CMake package is LibTorch) lives outside the
# checkout so every clone on this machine reuses it.
set -euo pipefail

FTRAIN_HOME="${FTRAIN_HOME:-$HOME/.cache/ftrain}"
VENV="$FTRAIN_HOME/venv"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"

apt_packages=(
  build-essential cmake make ccache pkg-config
  openmpi-bin libopenmpi-dev
  libhdf5-dev zlib1g-dev
  libboost-program-options-dev libboost-test-dev
  nlohmann-json3-dev libpcre2-dev libicu-dev
  libprotobuf-dev protobuf-compiler
  python3 python3-venv python3-dev
  # tests/slurm starts a one-node Slurm cluster of its own (nothing is configured or
  # started system-wide: without /etc/slurm/slurm.conf the packages' services stay off).
  # Slurm's mpi/pmix plugin loads libpmix.so at run time, which only libpmix-dev ships.
  slurm-wlm munge libpmix-dev
  # tests/cluster builds its nodes from network and UTS namespaces: ip, tc (iproute2),
  # nsenter and unshare (util-linux).
  iproute2 util-linux
)
# `make fuzz` (tests/fuzz/) builds with clang and links libFuzzer from compiler-rt.
if [[ "${1:-}" == "--fuzz" ]]; then
  apt_packages+=(clang libclang-rt-dev)
fi

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The stamp records which requirements the environment was built from, so a change to
# requirements.txt reinstalls and an unchanged one costs nothing.
stamp="$VENV/.ftrain-requirements"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$requirements" "$stamp"; then
  echo "setup: preparing Python environment in $VENV (first run downloads torch)"
  mkdir -p "$FTRAIN_HOME"
  [[ -x "$VENV/bin/python" ]] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$requirements"
  cp "$requirements" "$stamp"
fi
