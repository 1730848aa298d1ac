#!/usr/bin/env bash
# The Debian packages the test suite uses, installed when missing (as root with apt-get; otherwise
# the command to run is printed and the script fails). Called by scripts/test.sh, so the README's
# test command alone sets up a fresh Debian machine, and .ci/run adds nothing of its own.
#   qemu-user-static        emulated aarch64 edge checks (tests/converters/edge)
#   docker-registry         the local OCI registry (tests/registry, tests/promotion, `trainer registry serve`)
#   apache2-utils           htpasswd with bcrypt for that registry
#   groovy                  parses the Jenkinsfile (tests/ci)
#   prometheus              Prometheus + promtool (tests/monitoring, `trainer monitor up`)
#   buildah podman skopeo umoci mmdebstrap runc
#                           runtime images: base rootfs, build, run, push (tests/images, `trainer image`)
set -euo pipefail
PACKAGES=(qemu-user-static docker-registry apache2-utils groovy prometheus buildah podman skopeo umoci mmdebstrap runc)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: the tests need these Debian packages: ${missing[*]}" >&2
    echo "  run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
