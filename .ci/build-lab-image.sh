#!/usr/bin/env bash
# Build the JupyterLab image the Docker launcher's tests and bench use, without any container
# registry: a minimal Debian root file system (debootstrap) with a venv at /opt/lab holding
# JupyterLab, imported as `portal-lab:ci`. Skips when the image already exists.
#
# Needs root, a running Docker engine, debootstrap, and the Debian and Python package registries.
# Env: LAB_IMAGE (default portal-lab:ci), LAB_SUITE (default bookworm),
#      LAB_JUPYTERLAB (default: the version in the project's dev pins), LAB_ROOTFS (work dir).
set -euo pipefail

image="${LAB_IMAGE:-portal-lab:ci}"
suite="${LAB_SUITE:-bookworm}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jlab="${LAB_JUPYTERLAB:-$(sed -n 's/.*"jupyterlab==\([^"]*\)".*/\1/p' "$here/pyproject.toml" | head -n1)}"
jlab="${jlab:-4.5.0}"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-lab-image: $image already present, skipping"
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
    echo "build-lab-image: installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

rootfs="${LAB_ROOTFS:-$(mktemp -d /tmp/portal-lab-rootfs.XXXXXX)}"
cleanup() {
    # The chroot may still have /proc mounted if pip was interrupted.
    umount "$rootfs/proc" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

started=$(date +%s)
echo "build-lab-image: debootstrap $suite into $rootfs"
# No mirror argument: debootstrap's built-in default Debian mirror is used.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,procps \
    "$suite" "$rootfs" >"$rootfs.debootstrap.log" 2>&1 || {
    tail -n 40 "$rootfs.debootstrap.log"; exit 1; }
rm -f "$rootfs.debootstrap.log"

cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"

echo "build-lab-image: installing jupyterlab==$jlab into /opt/lab"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    /bin/bash -c "python3 -m venv /opt/lab && /opt/lab/bin/pip install --no-cache-dir -q 'jupyterlab==$jlab'"
umount "$rootfs/proc"

# Keep the image small and free of build-time state.
rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* "$rootfs/root/.cache"
: >"$rootfs/etc/resolv.conf"
mkdir -p "$rootfs/home/lab"

echo "build-lab-image: importing as $image"
tar -C "$rootfs" -c . | docker import \
    --change 'WORKDIR /home/lab' \
    --change 'ENV HOME=/home/lab PATH=/opt/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'EXPOSE 8888' \
    --change 'CMD ["/opt/lab/bin/jupyter","lab","--ip=0.0.0.0","--port=8888","--no-browser","--allow-root"]' \
    - "$image" >/dev/null
echo "build-lab-image: built $image in $(( $(date +%s) - started ))s"
