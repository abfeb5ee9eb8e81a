#!/usr/bin/env bash
# Checks what building and testing fedmesh needs beyond Rust: libclang and a C++ compiler
# (RocksDB), python3 with numpy and safetensors (the external-trainer tests), iproute2 and
# iptables (`testnet --netns --nat`, which its test runs as root), and with --chromium the
# chromium browser (the web page test). Installs what is missing when it can
# (as root, or with sudo that needs no password); otherwise stops at once and prints the exact
# command to run. FEDMESH_NO_INSTALL=1 only checks.
#
#   testnet/prerequisites.sh [--chromium]
set -euo pipefail

want_chromium=0
for arg in "$@"; do
  case "$arg" in
    --chromium) want_chromium=1 ;;
    *) echo "usage: $0 [--chromium]" >&2; exit 2 ;;
  esac
done

apt_packages=()
if ! { ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; } &&
   ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1; then
  # (libclang-cpp, which other packages bring, is not the libclang that bindgen loads)
  apt_packages+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || apt_packages+=(g++)
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null 2>&1 || apt_packages+=(iproute2)
PATH="$PATH:/usr/sbin:/sbin" command -v iptables >/dev/null 2>&1 || apt_packages+=(iptables)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || apt_packages+=(python3-pip)
if [ "$want_chromium" = 1 ] && ! command -v chromium >/dev/null 2>&1 &&
   ! command -v chromium-browser >/dev/null 2>&1; then
  apt_packages+=(chromium)
fi
need_python_packages=0
python3 -c 'import numpy, safetensors' >/dev/null 2>&1 || need_python_packages=1

if [ "${#apt_packages[@]}" = 0 ] && [ "$need_python_packages" = 0 ]; then
  exit 0
fi

if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  sudo="unavailable"
fi
apt_command="sudo apt-get update && sudo apt-get install -y ${apt_packages[*]:-}"
pip_command="python3 -m pip install --user numpy safetensors"

if [ "$sudo" = unavailable ] || [ "${FEDMESH_NO_INSTALL:-0}" = 1 ]; then
  echo "fedmesh needs what this machine lacks; run:" >&2
  [ "${#apt_packages[@]}" = 0 ] || echo "  $apt_command" >&2
  [ "$need_python_packages" = 0 ] || echo "  $pip_command" >&2
  exit 1
fi

if [ "${#apt_packages[@]}" != 0 ]; then
  echo "== installing ${apt_packages[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
if ! python3 -c 'import numpy, safetensors' >/dev/null 2>&1; then
  echo "== installing numpy and safetensors for python3" >&2
  python3 -m pip install --quiet --user numpy safetensors 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages numpy safetensors
fi
