#!/usr/bin/env bash
# shellcheck disable=SC2016 # mmdebstrap hooks are single-quoted: $1 is the root directory, expanded by the hook
# tests/docker/run.sh - the container really runs (issue 12, part 8).
#
# Starts a private dockerd (Debian's docker.io: vfs storage, no iptables, no bridge; its data root,
# exec root and socket live in a scratch directory that is removed on exit), makes
# debian:bookworm-slim locally when it is missing (mmdebstrap minbase from the Debian archive |
# docker import; nothing can be pulled from a registry here; the tarball is cached in
# ~/.cache/imgbuild-docker by a hash of its recipe), builds the Dockerfile's `prebuilt` stage around
# the workspace's debug binary (the runtime stage exactly as users get it, without compiling inside
# the container), then:
#  1. runs the README's container command as uid 4242 (not the image's 10001) with
#     --cap-drop ALL --security-opt no-new-privileges --network none --read-only and no device, on
#     a small Raspberry Pi OS shaped fixture made here (sfdisk, mkfs.vfat + mcopy, mke2fs -d +
#     e2fsck -fyD) and this repository's example project (imgbuild.toml, rootfs-overlay/,
#     templates/), and checks the outputs with the real tools: xz -t, sha256sum -c, bmaptool copy,
#     e2fsck -fn, fsck.vfat -n, debugfs read-back of the overlay file (content, mode, owner) and of
#     the template, mtools read-back of cmdline.txt/config.txt, every output owned by uid 4242;
#  2. starts the same command on a bigger fixture, sends `docker stop` (SIGTERM, SIGKILL after
#     10 s) once the compressed image is being written, and checks that the container was not
#     SIGKILLed (exit status != 137; the time it took is printed) and that --out holds no image,
#     working copy or temporary file afterwards (empty directories and the lock file may stay).
#
# Needs root (dockerd) and the packages of scripts/install-deps.sh (docker.io, mmdebstrap, tini is
# in the image). IMGBUILD (default: target/debug/imgbuild) is the binary put into the image.
# IMGBUILD_SKIP_DOCKER=1 skips the test. Every step is bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [[ ${IMGBUILD_SKIP_DOCKER:-0} == 1 ]]; then
  echo "docker test skipped (IMGBUILD_SKIP_DOCKER=1)"
  exit 0
fi

t0=$SECONDS
log() { echo "docker-test [$((SECONDS - t0))s]: $*" >&2; }
fail() {
  echo "docker-test: FAIL: $*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || fail "needs root to start dockerd (or set IMGBUILD_SKIP_DOCKER=1 to skip it)"
for tool in dockerd docker mmdebstrap sfdisk mkfs.vfat mcopy mtype mke2fs e2fsck debugfs fsck.vfat \
  xz sha256sum bmaptool python3 timeout; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/install-deps.sh installs it)"
done
IMGBUILD=${IMGBUILD:-${CARGO_TARGET_DIR:-$repo/target}/debug/imgbuild}
[[ -x $IMGBUILD ]] || fail "$IMGBUILD is not an executable (run cargo build --workspace first)"

# The uid:gid the container runs as: a caller that is neither root nor the image's user 10001.
RUN_UID=4242
RUN_GID=4242
IMAGE=imgbuild
CACHE=${IMGBUILD_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgbuild-docker}

# --- scratch dir and cleanup ----------------------------------------------------------------------
scratch=$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-docker.XXXXXX")
dockerd_pid=
cleanup() {
  local rc=$?
  set +e
  if [[ -n $dockerd_pid ]] && kill -0 "$dockerd_pid" 2>/dev/null; then
    local ids
    ids=$(timeout 30 docker ps -aq 2>/dev/null)
    # shellcheck disable=SC2086 # one id per word
    [[ -z $ids ]] || timeout 60 docker rm -f $ids >/dev/null 2>&1
    kill -TERM "$dockerd_pid"
    for _ in $(seq 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      log "dockerd did not stop within 30 s: SIGKILL"
      kill -KILL "$dockerd_pid"
    fi
    wait "$dockerd_pid" 2>/dev/null
  fi
  # dockerd's own containerd (it stops it itself unless dockerd was killed).
  local cpid
  cpid=$(cat "$scratch/exec/containerd/containerd.pid" 2>/dev/null)
  if [[ -n $cpid ]] && kill -0 "$cpid" 2>/dev/null; then
    kill -TERM "$cpid"
    sleep 2
    kill -0 "$cpid" 2>/dev/null && kill -KILL "$cpid"
  fi
  # Mounts left under the scratch dir (shm, netns), deepest first, then the files.
  awk -v p="$scratch/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
  rm -rf "$scratch"
  if [[ $rc -ne 0 && -f $scratch.dockerd.log ]]; then
    echo "--- last lines of dockerd's log" >&2
    tail -n 15 "$scratch.dockerd.log" >&2
  fi
  rm -f "$scratch.dockerd.log"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# --- a private dockerd ------------------------------------------------------------------------------
mkdir -p "$scratch/data" "$scratch/exec"
echo '{}' >"$scratch/daemon.json"
export DOCKER_HOST="unix://$scratch/docker.sock"
# The legacy builder: BuildKit would fetch the `# syntax=` frontend image from Docker Hub.
export DOCKER_BUILDKIT=0
log "starting dockerd (vfs, no iptables, no bridge) in $scratch"
dockerd --host "$DOCKER_HOST" --data-root "$scratch/data" --exec-root "$scratch/exec" \
  --pidfile "$scratch/dockerd.pid" --config-file "$scratch/daemon.json" \
  --containerd-namespace imgbuild-test --containerd-plugins-namespace imgbuild-test-plugins \
  --storage-driver=vfs --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
  >"$scratch.dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 600); do
  timeout 5 docker version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || fail "dockerd exited at start"
  sleep 0.1
done
timeout 5 docker version >/dev/null 2>&1 || fail "dockerd did not answer within 60 s"
log "dockerd $(docker version --format '{{.Server.Version}}') is up"

# --- debian:bookworm-slim, made locally when missing -----------------------------------------------
# debian:bookworm-slim is debuerreotype's minbase bookworm with documentation, man pages and
# locales excluded by dpkg path filters; this recipe is the same idea. Bump RECIPE_VERSION (or
# change an argument) and the tarball is rebuilt: its name carries a hash of the recipe.
RECIPE_VERSION=1
recipe=(
  --mode=root --variant=minbase --format=tar
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='path-exclude=/usr/share/groff/*'
  --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname'
  bookworm
)
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  key=$(printf '%s\n' "$RECIPE_VERSION" "${recipe[@]}" | sha256sum | cut -c1-16)
  tarball=$CACHE/bookworm-slim-$key.tar
  if [[ ! -s $tarball ]]; then
    mkdir -p "$CACHE"
    # Tarballs of older recipes (and partial ones) are of no further use.
    find "$CACHE" -maxdepth 1 -name 'bookworm-slim*.tar*' -delete
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    log "mmdebstrap minbase bookworm from ${mirror:-http://deb.debian.org/debian} -> $tarball"
    timeout --kill-after=30 900 mmdebstrap --quiet "${recipe[@]}" "$tarball.part" \
      "${mirror:-http://deb.debian.org/debian}" >&2 ||
      fail "mmdebstrap could not make the bookworm minbase tarball"
    mv "$tarball.part" "$tarball"
  fi
  log "docker import $tarball as debian:bookworm-slim"
  timeout 300 docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" debian:bookworm-slim >/dev/null ||
    fail "docker import $tarball failed"
fi

# --- the image: the Dockerfile's runtime stage around the workspace's binary ---------------------
# The build context holds only the binary (the repository's .dockerignore keeps target/ out of the
# default context). RUN steps use the host network for apt (the daemon has no bridge).
ctx=$scratch/context
mkdir -p "$ctx"
install -m 0755 "$IMGBUILD" "$ctx/imgbuild"
proxy_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [[ -z ${!v:-} ]] || proxy_args+=(--build-arg "$v")
done
log "docker build --target prebuilt -t $IMAGE (binary: $IMGBUILD)"
timeout --kill-after=30 900 docker build --quiet --network host "${proxy_args[@]}" \
  --target prebuilt -t "$IMAGE" -f "$repo/Dockerfile" "$ctx" >/dev/null ||
  fail "docker build of $repo/Dockerfile failed"
[[ $(docker image inspect --format '{{.Config.User}}' "$IMAGE") == 10001:10001 ]] ||
  fail "the image does not run as 10001:10001 by default"

# --- fixtures -----------------------------------------------------------------------------------------
# make_base OUT IMAGE_MIB BOOT_MIB FILLER_MIB: a Raspberry Pi OS shaped disk image (MBR; p1 FAT32
# "bootfs" at sector 8192, type 0x0c, bootable; p2 ext4 "rootfs" type 0x83) with FILLER_MIB of
# random data in /var/lib/filler.bin (0 = none).
make_base() {
  local out=$1 image_mib=$2 boot_mib=$3 filler_mib=$4
  local stage
  stage=$(mktemp -d "$scratch/stage.XXXXXX")
  local boot_start=8192 boot_sectors=$((boot_mib * 2048))
  local root_start=$((boot_start + boot_sectors))
  local root_bytes=$((image_mib * 1048576 - root_start * 512))
  local disk_id
  disk_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
  truncate -s "${image_mib}M" "$out"
  sfdisk --quiet "$out" <<EOF
label: dos
label-id: 0x$disk_id
unit: sectors

start=$boot_start, size=$boot_sectors, type=c, bootable
start=$root_start, type=83
EOF
  local b=$stage/boot r=$stage/root
  mkdir -p "$b/overlays"
  printf 'console=serial0,115200 console=tty1 root=PARTUUID=%s-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n' \
    "$disk_id" >"$b/cmdline.txt"
  printf '# http://rptl.io/configtxt\ndtparam=audio=on\ncamera_auto_detect=1\nauto_initramfs=1\ndtoverlay=vc4-kms-v3d\narm_64bit=1\n\n[pi4]\narm_boost=1\n\n[all]\n' \
    >"$b/config.txt"
  head -c 300000 /dev/urandom >"$b/kernel8.img"
  head -c 50000 /dev/urandom >"$b/bcm2711-rpi-4-b.dtb"
  head -c 100000 /dev/urandom >"$b/start4.elf"
  echo 'Device tree overlays.' >"$b/overlays/README"
  echo 'Raspberry Pi reference 2024-11-19' >"$b/issue.txt"

  mkdir -p "$r"/{usr/bin,usr/sbin,usr/lib/systemd/system,etc/systemd/system/multi-user.target.wants} \
    "$r"/{etc/ssh/sshd_config.d,etc/skel,home,root,var/lib/dpkg,var/log,tmp,dev,proc,sys,run,mnt,opt,srv} \
    "$r/boot/firmware"
  chmod 0700 "$r/root"
  chmod 1777 "$r/tmp"
  chmod 0555 "$r/proc" "$r/sys"
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
sshd:x:101:65534::/run/sshd:/usr/sbin/nologin
EOF
  sed 's/^\([^:]*\):.*/\1:*:19800:0:99999:7:::/' "$r/etc/passwd" >"$r/etc/shadow"
  printf 'root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\nsudo:x:27:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n' \
    >"$r/etc/group"
  printf 'root:*::\nsudo:*::\nshadow:*::\n' >"$r/etc/gshadow"
  chown 0:42 "$r/etc/shadow" "$r/etc/gshadow"
  chmod 0640 "$r/etc/shadow" "$r/etc/gshadow"
  echo raspberrypi >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\t\traspberrypi\n' >"$r/etc/hosts"
  printf 'proc /proc proc defaults 0 0\nPARTUUID=%s-01 /boot/firmware vfat defaults 0 2\nPARTUUID=%s-02 / ext4 defaults,noatime 0 1\n' \
    "$disk_id" "$disk_id" >"$r/etc/fstab"
  printf 'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n' >"$r/etc/ssh/sshd_config"
  echo '# ~/.bashrc: executed by bash(1) for non-login shells.' >"$r/etc/skel/.bashrc"
  echo '# ~/.profile: executed by the command interpreter for login shells.' >"$r/etc/skel/.profile"
  printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n' >"$r/usr/lib/os-release"
  ln -s ../usr/lib/os-release "$r/etc/os-release"
  echo 'Raspberry Pi reference 2024-11-19' >"$r/etc/rpi-issue"
  head -c 1200000 /dev/urandom >"$r/usr/bin/bash"
  printf 'Package: base-files\nStatus: install ok installed\n' >"$r/var/lib/dpkg/status"
  for i in $(seq 300); do echo "value=$i" >"$r/usr/lib/fixture-$i.conf"; done
  if ((filler_mib > 0)); then
    head -c "$((filler_mib * 1048576))" /dev/urandom >"$r/var/lib/filler.bin"
  fi
  chmod -R u+rwX,go+rX,go-w "$b"
  # 512-byte clusters: a small FAT32 needs them to have the 65525 clusters FAT32 requires.
  local msg
  msg=$(mkfs.vfat -F 32 -S 512 -s 1 -n bootfs --offset "$boot_start" "$out" $((boot_mib * 1024)) 2>&1) ||
    fail "mkfs.vfat on the fixture $out: $msg"
  MTOOLS_SKIP_CHECK=1 mcopy -s -p -i "$out@@$((boot_start * 512))" "$b"/* ::/
  mke2fs -q -F -t ext4 -L rootfs -d "$r" -E offset=$((root_start * 512)) "$out" "$((root_bytes / 1024))k"
  local rc=0
  e2fsck -fyD "$out?offset=$((root_start * 512))" >/dev/null 2>&1 || rc=$?
  ((rc <= 1)) || fail "e2fsck -fyD on the fixture $out: status $rc"
  rm -rf "$stage"
}

# A project directory as a user has it: the repository's example project + the base image.
make_project() {
  local dir=$1
  mkdir -p "$dir"
  cp -r "$repo/imgbuild.toml" "$repo/rootfs-overlay" "$repo/templates" "$dir/"
  chown -R "$RUN_UID:$RUN_GID" "$dir"
}

# The README's container command (README.md, "Container and GitHub Actions") with --user
# 4242:4242 for "$(id -u):$(id -g)", plus --network none and --read-only (nothing to download;
# imgbuild writes only under /work). Extra docker options come first, then imgbuild's --base.
# The docker client is bounded by a timeout (cleanup removes a container it leaves behind).
readme_command() {
  local dir=$1 base=$2
  shift 2
  timeout --kill-after=10 600 docker run --user "$RUN_UID:$RUN_GID" --cap-drop ALL --security-opt no-new-privileges \
    --network none --read-only "$@" -v "$dir:/work" "$IMAGE" \
    --board rpi4 --base "$base" --config imgbuild.toml --out dist/
}

log "fixture: 96 MiB Raspberry Pi OS shaped base (xz)"
proj=$scratch/project
make_project "$proj"
make_base "$scratch/base.img" 96 40 0
xz -T0 -1 -c "$scratch/base.img" >"$proj/base.img.xz"
chown "$RUN_UID:$RUN_GID" "$proj/base.img.xz"
rm "$scratch/base.img"

# --- 1. the README's command, outputs checked with the real tools --------------------------------
log "1. README command as uid $RUN_UID, no capabilities, no network, read-only root"
readme_command "$proj" base.img.xz --rm >"$scratch/run1.log" 2>&1 || {
  cat "$scratch/run1.log" >&2
  fail "the README's container command failed"
}
dist=$proj/dist
for f in imgbuild-rpi4.img.xz imgbuild-rpi4.img.xz.sha256 imgbuild-rpi4.bmap manifest.json; do
  [[ -s $dist/$f ]] || fail "dist/$f missing or empty after the build"
done
# Everything the container wrote (outputs, cache) belongs to the caller's uid.
others=$(find "$proj" \( ! -uid "$RUN_UID" -o ! -gid "$RUN_GID" \) -printf '%u:%g %P\n')
[[ -z $others ]] || fail "files not owned by $RUN_UID:$RUN_GID: $others"
xz -t "$dist/imgbuild-rpi4.img.xz" || fail "xz -t: the image is not a valid xz stream"
(cd "$dist" && sha256sum --quiet -c imgbuild-rpi4.img.xz.sha256) || fail "sha256sum -c failed"
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["board"]=="rpi4", m' \
  "$dist/manifest.json" || fail "manifest.json is not JSON for board rpi4"
out_img=$scratch/out.img
xz -dc "$dist/imgbuild-rpi4.img.xz" >"$out_img"
timeout 120 bmaptool -q copy --bmap "$dist/imgbuild-rpi4.bmap" "$dist/imgbuild-rpi4.img.xz" \
  "$scratch/bmapcopy.img" || fail "bmaptool copy with the bmap failed (checksum mismatch?)"
rm -f "$scratch/bmapcopy.img"

# Partition offsets from the output's own table.
read -r boot_off root_off < <(sfdisk --json "$out_img" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = {int(x["node"][len(x["node"]) - 1]): x for x in t["partitions"]}
print(p[1]["start"] * 512, p[2]["start"] * 512)')
rc=0
e2fsck -fn "$out_img?offset=$root_off" >"$scratch/e2fsck.log" 2>&1 || rc=$?
[[ $rc == 0 ]] || {
  cat "$scratch/e2fsck.log" >&2
  fail "e2fsck -fn on the output's root file system: status $rc"
}
boot_size=$(sfdisk --json "$out_img" | python3 -c '
import json, sys
print([x for x in json.load(sys.stdin)["partitiontable"]["partitions"] if x["node"].endswith("1")][0]["size"])')
dd if="$out_img" of="$scratch/boot.fat" bs=512 skip=$((boot_off / 512)) count="$boot_size" status=none
rc=0
fsck.vfat -n "$scratch/boot.fat" >"$scratch/fsck.log" 2>&1 || rc=$?
[[ $rc == 0 ]] || {
  cat "$scratch/fsck.log" >&2
  fail "fsck.vfat -n on the output's boot partition: status $rc"
}

# The overlay file: same bytes as in the repository, root:root, 0644 (README, "Overlays").
overlay_file=/etc/systemd/journald.conf.d/90-imgbuild.conf
debugfs -R "dump $overlay_file $scratch/overlay.out" "$out_img?offset=$root_off" >/dev/null 2>&1
cmp -s "$scratch/overlay.out" "$repo/rootfs-overlay$overlay_file" ||
  fail "debugfs: $overlay_file in the image differs from rootfs-overlay$overlay_file"
stat_line=$(debugfs -R "stat $overlay_file" "$out_img?offset=$root_off" 2>/dev/null | grep -m1 '^Inode:')
[[ $stat_line =~ Mode:\ +0?644 && $stat_line =~ Type:\ regular ]] ||
  fail "debugfs: $overlay_file is not a regular 0644 file: $stat_line"
owner_line=$(debugfs -R "stat $overlay_file" "$out_img?offset=$root_off" 2>/dev/null | grep -m1 '^User:')
[[ $owner_line =~ ^User:\ +0\ +Group:\ +0( |$) ]] || fail "debugfs: $overlay_file is not root:root: $owner_line"
# The template and the hostname of the example project.
issue=$(debugfs -R "cat /etc/issue" "$out_img?offset=$root_off" 2>/dev/null)
[[ $issue == 'gg-device - provisioned by imgbuild \n \l' ]] || fail "debugfs: /etc/issue is '$issue'"
hostname=$(debugfs -R "cat /etc/hostname" "$out_img?offset=$root_off" 2>/dev/null)
[[ $hostname == gg-device ]] || fail "debugfs: /etc/hostname is '$hostname'"
# The boot partition, read back with mtools.
cmdline=$(MTOOLS_SKIP_CHECK=1 mtype -i "$out_img@@$boot_off" ::/cmdline.txt)
[[ $cmdline == *"cgroup_enable=memory cgroup_memory=1"* && $(wc -l <<<"$cmdline") == 1 ]] ||
  fail "mtype: cmdline.txt is '$cmdline'"
MTOOLS_SKIP_CHECK=1 mtype -i "$out_img@@$boot_off" ::/config.txt | grep -qx 'enable_uart=1' ||
  fail "mtype: config.txt has no enable_uart=1"
rm -f "$out_img" "$scratch/boot.fat"
log "1. ok: xz -t, sha256sum -c, bmaptool copy, e2fsck -fn, fsck.vfat -n, debugfs and mtools read-back, owner $RUN_UID:$RUN_GID"

# --- 2. SIGTERM during a build --------------------------------------------------------------------
# A bigger base with 48 MiB of random data keeps the compression stage busy for a while (~20 s
# with the debug binary on 2 cores); raw, so the build reaches that stage quickly.
log "2. fixture: 128 MiB base with 48 MiB of random data"
proj2=$scratch/project2
make_project "$proj2"
make_base "$proj2/big.img" 128 40 48
chown "$RUN_UID:$RUN_GID" "$proj2/big.img"
dist2=$proj2/dist
log "2. README command on it, docker stop once the compressed image is being written"
readme_command "$proj2" big.img --detach --name imgbuild-sigterm >/dev/null
# The compressed image is being written: a file under --out, other than the final image, that
# starts with the xz magic (the image's temporary file, whatever it is called and wherever under
# --out it lives). The build is then in its compression stage, with the working copy and the
# temporary outputs in --out.
xz_being_written() {
  local f
  while IFS= read -r -d '' f; do
    [[ $(head -c 6 "$f" 2>/dev/null | od -An -tx1 | tr -d ' \n') == fd377a585a00 ]] && return 0
  done < <(find "$dist2" -type f ! -path "$dist2/imgbuild-rpi4.img.xz" -print0 2>/dev/null)
  return 1
}
writing=
for _ in $(seq 3000); do
  if xz_being_written; then
    writing=1
    break
  fi
  [[ $(docker inspect --format '{{.State.Running}}' imgbuild-sigterm) == true ]] || break
  sleep 0.1
done
if [[ -z $writing ]]; then
  docker logs imgbuild-sigterm >&2 || true
  fail "the build never reached its compression stage while the test watched (status $(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' imgbuild-sigterm))"
fi
find "$dist2" -mindepth 1 -printf '  before SIGTERM: %P (%s bytes)\n' | sort >&2
t_stop=$(date +%s.%N)
timeout 60 docker stop --time 10 imgbuild-sigterm >/dev/null
t_stopped=$(date +%s.%N)
took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t_stop" "$t_stopped")
code=$(docker inspect --format '{{.State.ExitCode}}' imgbuild-sigterm)
docker logs imgbuild-sigterm >"$scratch/run2.log" 2>&1 || true
log "2. docker stop took ${took} s; exit status $code; last output: $(tail -n 1 "$scratch/run2.log")"
left=$(find "$dist2" -mindepth 1 ! -type d ! -name .imgbuild.lock -printf '%P\n' | sort)
if [[ $code == 137 ]]; then
  fail "SIGTERM did not end the build: the container was SIGKILLed after 10 s (exit 137)"
elif [[ $code == 0 ]]; then
  fail "the build finished (exit 0) although SIGTERM came during compression"
elif [[ $code != 143 ]]; then
  fail "after SIGTERM the container exited with $code, not 143 (128 + SIGTERM)"
fi
log "2. ok: SIGTERM ended the build (exit $code after ${took} s, not SIGKILLed)"
[[ -z $left ]] || fail "SIGTERM left files in --out: $(echo "$left" | tr '\n' ' ')"
log "2. ok: --out holds no working copy or temporary file after SIGTERM"
log "all checks passed"
