#!/usr/bin/env bash
# tests/field/run.sh - the QEMU field test: a real Debian arm64 Raspberry Pi 4 image, built by
# imgbuild with a [greengrass] section and --preseed, boots under qemu-system-aarch64 and its first
# boot runs as designed. See tests/field/README.md. Run as root (binfmt_misc + mmdebstrap's chroot);
# the image itself is built and read back without mounts or loop devices.
#
# Env:
#   IMGBUILD              imgbuild binary to test (default: cargo build -p imgbuild, target/debug/imgbuild)
#   FIELD_CACHE           base image cache (default ~/.cache/imgbuild-field); key = hash of build-base.sh
#   FIELD_WORK            scratch directory (default: a new one under /var/tmp, deleted at the end)
#   FIELD_KEEP=1          keep the scratch directory
#   FIELD_BOOT_TIMEOUT    seconds per boot (default 1200)
#   FIELD_RASPI4B=0       skip the -M raspi4b boot
#   FIELD_SKIP_DEPS=1     do not run install-deps.sh (packages already there)
# Ends with "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

SERIAL_VIRT=TESTSERIAL123
SERIAL_DT=10000000abcdef01
NUCLEUS_VERSION=2.16.0
PLUGIN_VERSION=1.2.2
GG_USER_NAME=fieldadmin
HOSTNAME_WANTED="field-node"
BOOT_TIMEOUT=${FIELD_BOOT_TIMEOUT:-1200}
JAVA_PACKAGE=openjdk-17-jre-headless

W=${FIELD_WORK:-$(mktemp -d "${TMPDIR:-/var/tmp}/imgbuild-field.XXXXXX")}
mkdir -p "$W"
HTTP_PID=
SUMMARY_DONE=0

cleanup() {
    local rc=$?
    stop_qemu
    if [[ -n $HTTP_PID ]]; then kill "$HTTP_PID" 2>/dev/null || true; fi
    if [[ ${FIELD_KEEP:-0} != 1 ]]; then rm -rf "$W"; else echo "kept $W"; fi
    if [[ $SUMMARY_DONE != 1 ]]; then
        fail "field test aborted (exit $rc); the checks after that point did not run"
        echo "$PASSED passed, $FAILED failed"
    fi
}
trap cleanup EXIT
# a TERM (test-all.sh's overall timeout) or Ctrl-C still runs cleanup: QEMU ended by PID, scratch deleted
trap 'exit 143' TERM
trap 'exit 130' INT

summary() {
    SUMMARY_DONE=1
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

# ---------------------------------------------------------------- 1. host packages, binfmt
setup_host() {
    if [[ ${FIELD_SKIP_DEPS:-0} != 1 ]]; then
        note "installing host packages (tests/field/install-deps.sh)"
        bash "$HERE/install-deps.sh" >"$W/install-deps.log" 2>&1 || {
            tail -20 "$W/install-deps.log"
            return 1
        }
    fi
    register_binfmt
    note "qemu $(qemu-system-aarch64 --version | head -1 | awk '{print $4}'), binfmt arm64 ok"
}

# ---------------------------------------------------------------- 2. base image (cached)
base_image() {
    local key dir
    key=$(sha256sum "$HERE/build-base.sh" | cut -c1-16)
    dir=${FIELD_CACHE:-$HOME/.cache/imgbuild-field}/$key
    BASE=$dir/base.img
    if [[ -f $BASE ]]; then
        note "base image from cache: $BASE"
        return 0
    fi
    mkdir -p "$dir"
    note "building the Debian bookworm arm64 raspi base image (mmdebstrap, ~10 min)"
    if ! FIELD_WORK=$W/base-work "$HERE/build-base.sh" "$BASE" >"$W/build-base.log" 2>&1; then
        tail -30 "$W/build-base.log"
        return 1
    fi
    note "base image built: $BASE"
}

# ---------------------------------------------------------------- 3. imgbuild and its inputs
imgbuild_binary() {
    if [[ -n ${IMGBUILD:-} ]]; then
        IMGBUILD_BIN=$IMGBUILD
        return 0
    fi
    note "cargo build -p imgbuild"
    (cd "$REPO" && cargo build -q -p imgbuild)
    IMGBUILD_BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/imgbuild
}

# claim_material DIR: a self-signed EC claim certificate and key, as AWS IoT would issue them.
claim_material() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj "/CN=field-test-claim" -keyout "$1/claim.private.pem.key" -out "$1/claim.pem.crt" 2>/dev/null
}

# expected_config_lines: the lines the stand-in installer must find in its --init-config (quotes stripped).
expected_config_lines() {
    cat <<EOF
version: $NUCLEUS_VERSION
rootPath: /greengrass/v2
awsRegion: eu-west-1
iotDataEndpoint: abcdef1234567-ats.iot.eu-west-1.amazonaws.com
iotCredentialEndpoint: c1234567890abc.credentials.iot.eu-west-1.amazonaws.com
iotRoleAlias: FieldTestTokenExchangeRoleAlias
provisioningTemplate: FieldTestProvisioningTemplate
claimCertificatePath: /greengrass/v2/claim.pem.crt
claimCertificatePrivateKeyPath: /greengrass/v2/claim.private.pem.key
rootCaPath: /greengrass/v2/AmazonRootCA1.pem
ThingGroupName: field-test-group
mqttPort: 8883
EOF
}

# standin_artifacts: the stand-in plugin jar and nucleus zip (lib/Greengrass.jar = GreengrassSetup.java)
# in $W/srv, with the expectations the installer checks baked into its jar.
standin_artifacts() {
    local s=$W/standin n=1 line
    rm -rf "$s" "$W/srv"
    mkdir -p "$s/classes" "$s/plugin" "$s/zip/lib" "$W/srv"
    echo "field test stand-in for aws.greengrass.FleetProvisioningByClaim $PLUGIN_VERSION" >"$s/plugin/README.txt"
    jar --create --file "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" -C "$s/plugin" .
    {
        echo "root=/greengrass/v2"
        echo "plugin_name=fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
        echo "plugin_sha256=$(sha256sum "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" | cut -d' ' -f1)"
        echo "claim_cert_path=/greengrass/v2/claim.pem.crt"
        echo "claim_cert_sha256=$(sha256sum "$W/claim.pem.crt" | cut -d' ' -f1)"
        echo "claim_key_path=/greengrass/v2/claim.private.pem.key"
        echo "claim_key_sha256=$(sha256sum "$W/claim.private.pem.key" | cut -d' ' -f1)"
        echo "root_ca_path=/greengrass/v2/AmazonRootCA1.pem"
        while IFS= read -r line; do
            echo "config.$n=$line"
            n=$((n + 1))
        done < <(expected_config_lines)
    } >"$s/classes/field-expect.properties"
    javac -Xlint:all -Werror --release 17 -d "$s/classes" "$HERE/standin/GreengrassSetup.java"
    jar --create --file "$s/zip/lib/Greengrass.jar" --main-class GreengrassSetup -C "$s/classes" .
    echo "field test stand-in, not the AWS IoT Greengrass nucleus" >"$s/zip/README.txt"
    (cd "$s/zip" && jar --create --no-manifest --file "$W/srv/greengrass-$NUCLEUS_VERSION.zip" lib README.txt)
}

# serve_artifacts: a local HTTP server on 127.0.0.1 (an ephemeral port) for imgbuild --preseed to fetch from.
serve_artifacts() {
    python3 -c '
import http.server, functools, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2], "w").write(str(server.server_address[1]))
server.serve_forever()' "$W/srv" "$W/http.port" >"$W/http.log" 2>&1 &
    HTTP_PID=$!
    local _
    for _ in $(seq 50); do
        [[ -s $W/http.port ]] && break
        sleep 0.1
    done
    [[ -s $W/http.port ]] || { echo "local HTTP server did not start: $(cat "$W/http.log")"; return 1; }
    HTTP_URL=http://127.0.0.1:$(cat "$W/http.port")
}

write_config() {
    local pub
    pub=$(cat "$W/id_field.pub")
    cp "$HERE/guest/field-watch" "$HERE/guest/field-watch.service" "$HERE/guest/field-console.conf" "$W/"
    cat >"$W/field.toml" <<EOF
board = "rpi4-debian"
hostname = "$HOSTNAME_WANTED"

[user]
name = "$GG_USER_NAME"
ssh_authorized_keys = ["$pub"]

# Test only: report first boot's outcome on the console and power off (see guest/).
[[file]]
path = "/usr/local/sbin/field-watch"
source = "field-watch"
mode = "0755"

[[file]]
path = "/etc/systemd/system/field-watch.service"
source = "field-watch.service"

[[file]]
path = "/etc/systemd/system/imgbuild-firstboot.service.d/field-console.conf"
source = "field-console.conf"

[systemd]
enable = ["field-watch.service"]

[greengrass]
region = "eu-west-1"
data_endpoint = "abcdef1234567-ats.iot.eu-west-1.amazonaws.com"
credential_endpoint = "c1234567890abc.credentials.iot.eu-west-1.amazonaws.com"
role_alias = "FieldTestTokenExchangeRoleAlias"
provisioning_template = "FieldTestProvisioningTemplate"
thing_group = "field-test-group"
claim_cert = "claim.pem.crt"
claim_key = "claim.private.pem.key"
nucleus_version = "$NUCLEUS_VERSION"
nucleus_url = "$HTTP_URL/greengrass-$NUCLEUS_VERSION.zip"
nucleus_sha256 = "$(sha256sum "$W/srv/greengrass-$NUCLEUS_VERSION.zip" | cut -d' ' -f1)"
plugin_version = "$PLUGIN_VERSION"
plugin_url = "$HTTP_URL/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
plugin_sha256 = "$(sha256sum "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" | cut -d' ' -f1)"
docker = "debian"
java_package = "$JAVA_PACKAGE"

[greengrass.firstboot_env]
# no network in the guest: do not wait 2 minutes for NTP (the clock floor is the build time)
CLOCK_WAIT_SECONDS = "5"
EOF
}

build_image() {
    note "imgbuild inputs: SSH key, claim certificate/key, stand-in nucleus and plugin"
    ssh-keygen -q -t ed25519 -N '' -C field-test -f "$W/id_field"
    claim_material "$W"
    standin_artifacts
    serve_artifacts
    write_config
    note "imgbuild build --board rpi4-debian --preseed"
    if ! "$IMGBUILD_BIN" build --board rpi4-debian --base "$BASE" --config "$W/field.toml" --out "$W/out" \
        --name field --preseed --cache-dir "$W/cache" --compress none >"$W/imgbuild.log" 2>&1; then
        cat "$W/imgbuild.log"
        return 1
    fi
    kill "$HTTP_PID" 2>/dev/null || true
    HTTP_PID=
    note "imgbuild done: $(du -m "$W"/out/* | tr '\n\t' '  ')"
    mv "$W/out/field.img" "$W/built.img"
    rm -rf "$W/cache"
}

# ---------------------------------------------------------------- 4. boots
# boot_files IMG: kernel, initrd, DTB and cmdline.txt from the FAT partition (mtools).
boot_files() {
    local img=$1 off names
    off=$(part_offset "$img" 1)
    names=$(MTOOLS_SKIP_CHECK=1 mdir -b -i "$img@@$off" ::/ | sed 's,^::/,,')
    KERNEL_NAME=$(grep -E '^vmlinuz-' <<<"$names" | sort -V | tail -1)
    INITRD_NAME=$(grep -E '^initrd.img-' <<<"$names" | sort -V | tail -1)
    mkdir -p "$W/boot"
    MTOOLS_SKIP_CHECK=1 mcopy -n -i "$img@@$off" "::/$KERNEL_NAME" "::/$INITRD_NAME" ::/bcm2711-rpi-4-b.dtb \
        ::/cmdline.txt "$W/boot/"
    KERNEL=$W/boot/$KERNEL_NAME
    INITRD=$W/boot/$INITRD_NAME
    CMDLINE=$(tr -d '\r\n' <"$W/boot/cmdline.txt")
}

# boot_virt NAME DISK EXTRA-CMDLINE: -M virt with the image's kernel and cmdline.txt (+ PL011 console).
boot_virt() {
    boot "$1" "$W/console-$1.log" "$BOOT_TIMEOUT" \
        qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -accel tcg,thread=multi \
        -nodefaults -display none -monitor none -nic none -no-reboot \
        -serial "file:$W/console-$1.log" \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "$CMDLINE console=ttyAMA0 $3" \
        -drive "file=$2,format=raw,if=virtio,cache=unsafe"
}

# raspi4b_dtb: Debian's bcm2711-rpi-4-b.dtb patched for QEMU 10's raspi4b model, with /serial-number.
raspi4b_dtb() {
    local dtb=$W/rpi4-qemu.dtb n
    cp "$W/boot/bcm2711-rpi-4-b.dtb" "$dtb"
    # unimplemented HDMI block at 0x7ef0xxxx (l2-intc, hdmi i2c) -> synchronous external abort
    for n in $(fdtget -l "$dtb" /soc | grep -E '@7ef|^hdmi|^dsi|^pixelvalve|^vec|^hvs'); do
        fdtput -t s "$dtb" "/soc/$n" status disabled
    done
    # QEMU attaches the SD card to the Arasan SDHCI (below); the empty EMMC2 controller shares its
    # interrupt (GIC SPI 126) and its endless card probing stalls the card's transfers: disable it
    fdtput -t s "$dtb" /emmc2bus/mmc@7e340000 status disabled
    # QEMU wires the SD card to the Arasan SDHCI (the Wi-Fi SDIO slot on real hardware)
    fdtput -d "$dtb" /soc/mmc@7e300000 mmc-pwrseq
    fdtput -r "$dtb" /soc/mmc@7e300000/wifi@1
    # what the Pi firmware does: the board serial number in the device tree
    fdtput -t s "$dtb" / serial-number "$SERIAL_DT"
    DTB=$dtb
}

# boot_raspi4b NAME RAWDISK: -M raspi4b from a qcow2 overlay (the SD card size must be a power of
# two), converted back to a raw image afterwards for read-back. The console moves to the PL011:
# with cmdline.txt's console=ttyS1 (the mini UART) the SD card's interrupts get lost under QEMU 10
# (mmc0 "Timeout waiting for hardware interrupt", soft lockups).
boot_raspi4b() {
    local name=$1 disk=$2 size p=1 rc=0
    size=$(stat -c %s "$disk")
    while ((p < size)); do p=$((p * 2)); done
    qemu-img create -q -f qcow2 -F raw -b "$disk" "$W/sd.qcow2" "$p"
    raspi4b_dtb
    boot "$name" "$W/console-$name.log" "$BOOT_TIMEOUT" \
        qemu-system-aarch64 -M raspi4b -m 2G -display none -monitor none -no-reboot \
        -serial "file:$W/console-$name.log" -serial null \
        -kernel "$KERNEL" -initrd "$INITRD" -dtb "$DTB" \
        -append "${CMDLINE//console=ttyS1,115200/} console=ttyAMA0,115200 modprobe.blacklist=vc4,v3d,snd_bcm2835,bcm2835_v4l2,bcm2835_mmal_vchiq,vchiq" \
        -drive "file=$W/sd.qcow2,if=sd,format=qcow2,cache=unsafe" || rc=$?
    qemu-img convert -O raw "$W/sd.qcow2" "$disk.after"
    rm -f "$W/sd.qcow2"
    mv "$disk.after" "$disk"
    return "$rc"
}

# ---------------------------------------------------------------- 5. assertions
# journal_of DISK: the image's journal copied out, for journalctl -D.
journal_of() {
    img_journal "$1" "$W/journal"
    JOURNAL=$W/journal/journal
}

jctl() {
    journalctl -D "$JOURNAL" --no-pager -q "$@" 2>/dev/null
}

assert_built_image() {
    local img=$W/built.img inspect
    note "assertions on the built image"
    inspect=$("$IMGBUILD_BIN" inspect "$img" 2>&1 || true)
    check "imgbuild inspect: RASPIFIRM and RASPIROOT" grep -q RASPIROOT <<<"$inspect"
    check "built image: e2fsck -fn clean" fs_clean "$img"
    check "first-boot unit enabled" img_exists "$img" /etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service
    check "claim key in the image" img_exists "$img" /greengrass/v2/claim.private.pem.key
    check "pre-seeded nucleus zip in the image" img_exists "$img" "/var/lib/imgbuild/preseed/greengrass-nucleus-$NUCLEUS_VERSION.zip"
    check "pre-seeded docker.io .deb in the image" grep -q '^docker.io_.*\.deb$' < <(debugfs -R "ls -p /var/lib/imgbuild/preseed/debs" "$(rootfs_spec "$img")" 2>/dev/null | awk -F/ '{print $6}')
    check "cmdline.txt has the Greengrass cgroup defaults" grep -q 'cgroup_enable=memory' <<<"$CMDLINE"
    check_not "docker.io not yet installed in the built image" dpkg_installed "$img" docker.io
}

# assert_common CONSOLE DISK SERIAL: what every first boot (success or failure) leaves.
assert_common() {
    local log=$1 img=$2 serial=$3 tag=$4
    check_eq "$tag: imgbuild-firstboot started once" "$(console_count "$log" 'Starting .*imgbuild-firstboo')" 1
    check "$tag: serial '$serial' read on the device" grep -qa "imgbuild-firstboot\[serial\]: serial number '$serial'" "$log"
    check_eq "$tag: serial stored" "$(img_cat "$img" /var/lib/imgbuild/firstboot/serial)" "$serial"
    check "$tag: hostname $HOSTNAME_WANTED at runtime" grep -qa "FIELD-DONE .*hostname=$HOSTNAME_WANTED " "$log"
    check "$tag: Greengrass cgroup options reached the kernel" grep -qa 'FIELD-CMDLINE .*cgroup_enable=memory' "$log"
    check "$tag: docker.io installed (dpkg status)" dpkg_installed "$img" docker.io
    check "$tag: $JAVA_PACKAGE installed (dpkg status)" dpkg_installed "$img" "$JAVA_PACKAGE"
    check "$tag: packages came from the pre-seeded .debs" grep -qa 'installing [0-9]* pre-seeded package file' "$log"
    check "$tag: ggc_user created" grep -q '^ggc_user:' < <(img_cat "$img" /etc/passwd)
    check "$tag: e2fsck -fn clean after shutdown" fs_clean "$img"
    check_eq "$tag: hostname file" "$(img_cat "$img" /etc/hostname)" "$HOSTNAME_WANTED"
    check "$tag: SSH key installed for $GG_USER_NAME" grep -qF "$(cut -d' ' -f1-2 "$W/id_field.pub")" < <(img_cat "$img" "/etc/ssh/authorized_keys/$GG_USER_NAME")
    # Debian's raspi image ships `root::` (console login without a password): imgbuild locks it.
    check "$tag: no password login for root" shadow_locked "$img" root
    check "$tag: no password login for $GG_USER_NAME" shadow_locked "$img" "$GG_USER_NAME"
}

# assert_succeeded CONSOLE DISK SERIAL TAG
assert_succeeded() {
    local log=$1 img=$2 serial=$3 tag=$4
    check "$tag: first boot succeeded" grep -qa 'FIELD-DONE firstboot=succeeded' "$log"
    check "$tag: stand-in installer ran" grep -qa "FIELD-STANDIN OK serial=$serial" "$log"
    check_eq "$tag: stand-in marker" "$(img_cat "$img" /greengrass/v2/field-standin.marker)" "serial=$serial"
    check "$tag: greengrass.service active at the end" grep -qa 'FIELD-DONE .*greengrass=active' "$log"
    check "$tag: greengrass.service enabled" img_exists "$img" /etc/systemd/system/multi-user.target.wants/greengrass.service
    check_not "$tag: claim key deleted" img_exists "$img" /greengrass/v2/claim.private.pem.key
    check_not "$tag: claim certificate deleted" img_exists "$img" /greengrass/v2/claim.pem.crt
    check_not "$tag: rendered config deleted" img_exists "$img" /var/lib/imgbuild/firstboot/work/config.yaml
    check_not "$tag: config template deleted" img_exists "$img" /etc/imgbuild/greengrass-config.yaml.in
    check_not "$tag: pre-seed directory deleted" img_exists "$img" /var/lib/imgbuild/preseed
    check "$tag: root CA kept" img_exists "$img" /greengrass/v2/AmazonRootCA1.pem
    check "$tag: done marker" img_exists "$img" /var/lib/imgbuild/firstboot/done
    check_not "$tag: first-boot unit disabled" img_exists "$img" /etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service
}

# ---------------------------------------------------------------- main
main() {
    setup_host
    base_image
    imgbuild_binary
    build_image
    boot_files "$W/built.img"
    assert_built_image

    # virt, boot 1: the stand-in installer fails on purpose
    local disk=$W/virt.img log
    cp --sparse=always "$W/built.img" "$disk"
    log=$W/console-virt-fail.log
    boot_virt virt-fail "$disk" "imgbuild.serial=$SERIAL_VIRT field.standin=fail" ||
        fail "virt-fail: guest powered off within ${BOOT_TIMEOUT}s"
    assert_common "$log" "$disk" "$SERIAL_VIRT" virt-fail
    check "virt-fail: first boot reported failed" grep -qa 'FIELD-DONE firstboot=failed' "$log"
    check "virt-fail: stand-in failed on purpose" grep -qa 'FIELD-STANDIN ERROR: failing on purpose' "$log"
    check "virt-fail: claim key kept" img_exists "$disk" /greengrass/v2/claim.private.pem.key
    check "virt-fail: claim certificate kept" img_exists "$disk" /greengrass/v2/claim.pem.crt
    check "virt-fail: config template kept" img_exists "$disk" /etc/imgbuild/greengrass-config.yaml.in
    check "virt-fail: unit still enabled" img_exists "$disk" /etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service
    check_not "virt-fail: no done marker" img_exists "$disk" /var/lib/imgbuild/firstboot/done
    check "virt-fail: steps before install marked done" img_exists "$disk" /var/lib/imgbuild/firstboot/config.done
    check_not "virt-fail: install not marked done" img_exists "$disk" /var/lib/imgbuild/firstboot/install.done
    journal_of "$disk"
    check "virt-fail: journal names the failed step (priority err)" grep -q "imgbuild-firstboot\[install\]: ERROR: step 'install' failed" < <(jctl -t imgbuild-firstboot -p err -o cat)

    # virt, boot 2: a later boot retries, resumes at the install step and succeeds
    log=$W/console-virt-retry.log
    boot_virt virt-retry "$disk" "imgbuild.serial=$SERIAL_VIRT" || fail "virt-retry: guest powered off within ${BOOT_TIMEOUT}s"
    check_eq "virt-retry: imgbuild-firstboot started once" "$(console_count "$log" 'Starting .*imgbuild-firstboo')" 1
    check "virt-retry: packages step skipped" grep -qa 'imgbuild-firstboot\[packages\]: already done, skipping' "$log"
    assert_succeeded "$log" "$disk" "$SERIAL_VIRT" virt-retry
    check "virt-retry: e2fsck -fn clean" fs_clean "$disk"

    # virt, boot 3: nothing happens any more
    log=$W/console-virt-again.log
    boot_virt virt-again "$disk" "imgbuild.serial=$SERIAL_VIRT" || fail "virt-again: guest powered off within ${BOOT_TIMEOUT}s"
    check "virt-again: guest reported" grep -qa 'FIELD-DONE' "$log"
    check_eq "virt-again: imgbuild-firstboot not started" "$(console_count "$log" 'imgbuild-firstboo|imgbuild first boot:')" 0
    check "virt-again: greengrass.service active" grep -qa 'FIELD-DONE .*greengrass=active' "$log"
    journal_of "$disk"
    check_eq "virt-again: 3 boots in the journal" "$(jctl --list-boots | wc -l)" 3
    check_eq "virt-again: no first-boot lines in the last boot's journal" "$(jctl -b 0 -t imgbuild-firstboot -o cat | wc -l)" 0
    check "virt-again: e2fsck -fn clean" fs_clean "$disk"
    rm -f "$disk"

    # raspi4b: a fresh copy, serial from the device tree, stand-in succeeds
    if [[ ${FIELD_RASPI4B:-1} == 1 ]]; then
        disk=$W/raspi4b.img
        cp --sparse=always "$W/built.img" "$disk"
        log=$W/console-raspi4b.log
        boot_raspi4b raspi4b "$disk" || fail "raspi4b: guest powered off within ${BOOT_TIMEOUT}s"
        assert_common "$log" "$disk" "$SERIAL_DT" raspi4b
        check "raspi4b: serial came from the device tree" grep -qa "serial number '$SERIAL_DT' (from devicetree)" "$log"
        assert_succeeded "$log" "$disk" "$SERIAL_DT" raspi4b
        rm -f "$disk"
    fi
}

main
summary
