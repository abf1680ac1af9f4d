#!/usr/bin/env bash
# tests/field/run.sh - the QEMU field test: a real Debian arm64 Raspberry Pi 4 image, built by
# imgbuild with a [greengrass] section and --preseed, boots under qemu-system-aarch64 and provisions
# itself by claim over MQTT/TLS against a local AWS IoT stand-in (mosquitto + iot/responder.py +
# moto, 127.0.0.1 only). See tests/field/README.md. Run as root (binfmt_misc + mmdebstrap's chroot);
# the image itself is built and read back without mounts or loop devices.
#
# Env:
#   IMGBUILD              imgbuild binary to test (default: cargo build -p imgbuild, target/debug/imgbuild)
#   FIELD_CACHE           base image cache (default ~/.cache/imgbuild-field); key = hash of build-base.sh
#   FIELD_WORK            scratch directory (default: a new one under /var/tmp, deleted at the end)
#   FIELD_KEEP=1          keep the scratch directory
#   FIELD_BOOT_TIMEOUT    seconds per boot (default 1200)
#   FIELD_RASPI4B=1       also boot -M raspi4b (no network there: serial from the device tree)
#   FIELD_SKIP_DEPS=1     do not run install-deps.sh (packages already there)
# Ends with "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
# shellcheck source-path=SCRIPTDIR source=iot.sh
source "$HERE/iot.sh"
# the on-device paths and names (CONTRACT_*), generated from imgbuild/greengrass/src/contract.rs
# shellcheck source-path=SCRIPTDIR source=../../firstboot/lib/contract.sh
source "$REPO/firstboot/lib/contract.sh"
GG=$CONTRACT_GG_ROOT
CLAIM_CERT=$GG/$CONTRACT_CLAIM_CERT_NAME
CLAIM_KEY=$GG/$CONTRACT_CLAIM_KEY_NAME

SERIAL_VIRT=TESTSERIAL123
# first boot's bounded wait for proof of provisioning ([greengrass.firstboot_env]); the copies that
# must fail (rejected registration, old order) get PROVISION_TIMEOUT_SHORT
PROVISION_TIMEOUT=180
PROVISION_TIMEOUT_SHORT=90
SERIAL_DT=10000000abcdef01
NUCLEUS_VERSION=2.16.0
AWSIOTSDK_VERSION=1.31.0
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
    iot_stop_all
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

# expected_config_lines: the lines the stand-in installer must find in its --init-config (quotes stripped).
expected_config_lines() {
    cat <<EOF
version: $NUCLEUS_VERSION
rootPath: $GG
awsRegion: eu-west-1
iotDataEndpoint: $IOT_ENDPOINT
iotCredentialEndpoint: c1234567890abc.credentials.iot.eu-west-1.amazonaws.com
iotRoleAlias: FieldTestTokenExchangeRoleAlias
provisioningTemplate: $IOT_TEMPLATE
claimCertificatePath: $CLAIM_CERT
claimCertificatePrivateKeyPath: $CLAIM_KEY
ThingGroupName: field-test-group
mqttPort: 8883
EOF
}

# python_sdk DIR: the AWS IoT Device SDK v2 for Python for the guest (bookworm arm64: CPython 3.11),
# binary wheels from PyPI (pinned), unpacked into DIR - the stand-in nucleus's lib/python.
python_sdk() {
    local dl=${FIELD_CACHE:-$HOME/.cache/imgbuild-field}/wheels-awsiotsdk-$AWSIOTSDK_VERSION whl
    if ! compgen -G "$dl/awscrt-*manylinux2014_aarch64*.whl" >/dev/null; then
        mkdir -p "$dl"
        python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --platform manylinux2014_aarch64 --python-version 311 --implementation cp \
            --dest "$dl" "awsiotsdk==$AWSIOTSDK_VERSION" >"$W/pip.log" 2>&1 || {
            cat "$W/pip.log"
            return 1
        }
    fi
    mkdir -p "$1"
    for whl in "$dl"/*.whl; do
        python3 -m zipfile -e "$whl" "$1"
    done
}

# standin_artifacts: the stand-in plugin jar and nucleus zip in $W/srv: lib/Greengrass.jar
# (standin/GreengrassSetup.java, the installer, with its expectations baked in), lib/field-nucleus.py
# (the nucleus process, which provisions) and lib/python (the AWS IoT Device SDK it uses).
standin_artifacts() {
    local s=$W/standin n=1 line
    rm -rf "$s" "$W/srv"
    mkdir -p "$s/classes" "$s/plugin" "$s/zip/lib" "$W/srv"
    echo "field test stand-in for aws.greengrass.FleetProvisioningByClaim $PLUGIN_VERSION" >"$s/plugin/README.txt"
    jar --create --file "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" -C "$s/plugin" .
    {
        echo "root=$GG"
        echo "plugin_name=fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
        echo "plugin_sha256=$(sha256sum "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" | cut -d' ' -f1)"
        while IFS= read -r line; do
            echo "config.$n=$line"
            n=$((n + 1))
        done < <(expected_config_lines)
    } >"$s/classes/field-expect.properties"
    javac -Xlint:all -Werror --release 17 -d "$s/classes" "$HERE/standin/GreengrassSetup.java"
    jar --create --file "$s/zip/lib/Greengrass.jar" --main-class GreengrassSetup -C "$s/classes" .
    cp "$HERE/standin/field-nucleus.py" "$s/zip/lib/field-nucleus.py"
    python_sdk "$s/zip/lib/python"
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
    cp "$HERE/guest/field-watch" "$HERE/guest/field-watch.service" "$HERE/guest/field-console.conf" \
        "$HERE/guest/field-network.network" "$W/"
    # the base's /etc/hosts plus the data endpoint at the address QEMU forwards to the broker; this
    # [[file]] replaces the /etc/hosts imgbuild writes for `hostname`, so it carries that line too
    {
        img_cat "$BASE" /etc/hosts | grep -v '^127\.0\.1\.1[[:space:]]'
        printf '127.0.1.1\t%s\n' "$HOSTNAME_WANTED"
        printf '%s\t%s\n' "$IOT_GUEST_ADDR" "$IOT_ENDPOINT"
    } >"$W/field-hosts"
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
path = "$CONTRACT_UNIT_PATH.d/field-console.conf"
source = "field-console.conf"

# Test only: the guest's network (QEMU user mode, restrict=on) and the data endpoint's address;
# imgbuild itself adds no host entries.
[[file]]
path = "/etc/systemd/network/20-field.network"
source = "field-network.network"

[[file]]
path = "/etc/hosts"
source = "field-hosts"

[systemd]
enable = ["field-watch.service", "systemd-networkd.service"]

[greengrass]
region = "eu-west-1"
data_endpoint = "$IOT_ENDPOINT"
credential_endpoint = "c1234567890abc.credentials.iot.eu-west-1.amazonaws.com"
role_alias = "FieldTestTokenExchangeRoleAlias"
provisioning_template = "$IOT_TEMPLATE"
thing_group = "$IOT_THING_GROUP"
claim_cert = "claim.pem.crt"
claim_key = "claim.private.pem.key"
# the broker's certificate comes from the test CA
root_ca = "field-ca.pem"
nucleus_version = "$NUCLEUS_VERSION"
nucleus_url = "$HTTP_URL/greengrass-$NUCLEUS_VERSION.zip"
nucleus_sha256 = "$(sha256sum "$W/srv/greengrass-$NUCLEUS_VERSION.zip" | cut -d' ' -f1)"
plugin_version = "$PLUGIN_VERSION"
plugin_url = "$HTTP_URL/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
plugin_sha256 = "$(sha256sum "$W/srv/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" | cut -d' ' -f1)"
docker = "debian"
java_package = "$JAVA_PACKAGE"

[greengrass.firstboot_env]
# no NTP in the guest: do not wait 2 minutes for it (the clock floor is the build time)
CLOCK_WAIT_SECONDS = "5"
GG_PROVISION_TIMEOUT = "$PROVISION_TIMEOUT"
EOF
}

build_image() {
    note "imgbuild inputs: SSH key, test CA and claim certificate/key, stand-in nucleus and plugin"
    ssh-keygen -q -t ed25519 -N '' -C field-test -f "$W/id_field"
    iot_ca
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
# Network: QEMU user mode with restrict=on (the guest reaches no host address and nothing outside);
# the only way out is the guestfwd: a TCP connection to IOT_GUEST_ADDR:8883 runs socat to the broker
# on 127.0.0.1:BROKER_PORT (when the broker is down socat fails and the guest sees the connection close).
# romfile= : no PXE option ROM (the kernel is given directly; Debian ships it in ipxe-qemu, not needed).
boot_virt() {
    boot "$1" "$W/console-$1.log" "$BOOT_TIMEOUT" \
        qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -accel tcg,thread=multi \
        -nodefaults -display none -monitor none -no-reboot \
        -netdev "user,id=net0,restrict=on,guestfwd=tcp:$IOT_GUEST_ADDR:8883-cmd:socat - TCP:127.0.0.1:$BROKER_PORT" \
        -device virtio-net-pci,netdev=net0,romfile= \
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
    check "first-boot unit enabled" img_exists "$img" "$CONTRACT_UNIT_LINK"
    check "claim key in the image" img_exists "$img" "$CLAIM_KEY"
    check "pre-seeded nucleus zip in the image" img_exists "$img" "$CONTRACT_PRESEED_DIR/${CONTRACT_PRESEED_NUCLEUS_NAME/"$CONTRACT_VERSION_PLACEHOLDER"/$NUCLEUS_VERSION}"
    check "pre-seeded docker.io .deb in the image" grep -q '^docker.io_.*\.deb$' < <(debugfs -R "ls -p $CONTRACT_PRESEED_DEBS_DIR" "$(rootfs_spec "$img")" 2>/dev/null | awk -F/ '{print $6}')
    check "cmdline.txt has the Greengrass cgroup defaults" grep -q 'cgroup_enable=memory' <<<"$CMDLINE"
    check_not "docker.io not yet installed in the built image" dpkg_installed "$img" docker.io
}

# assert_common CONSOLE DISK SERIAL: what every first boot (success or failure) leaves.
assert_common() {
    local log=$1 img=$2 serial=$3 tag=$4
    check_eq "$tag: imgbuild-firstboot started once" "$(console_count "$log" 'Starting .*imgbuild-firstboo')" 1
    check "$tag: serial '$serial' read on the device" grep -qa "imgbuild-firstboot\[serial\]: serial number '$serial'" "$log"
    check_eq "$tag: serial stored" "$(img_cat "$img" "$CONTRACT_SERIAL_FILE")" "$serial"
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

# nucleus_log DISK: the nucleus's log (greengrass.log) in the image.
nucleus_log() {
    img_cat "$1" "$GG/logs/greengrass.log"
}

# root_ca_of DISK: the rootCaPath the image's rendered config template gives the plugin.
root_ca_of() {
    img_cat "$1" "$CONTRACT_CONFIG_TEMPLATE" | sed -n 's/^ *"\{0,1\}rootCaPath"\{0,1\}: *"\(.*\)"$/\1/p'
}

# tlog_value DISK KEY...: the last value config.tlog records for the path KEY... ("" when none).
tlog_value() {
    local img=$1
    shift
    img_cat "$img" "$GG/config/config.tlog" | python3 -c '
import json, sys
want, value = sys.argv[1:], ""
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("TP") == want and e.get("W") == "changed":
        value = e.get("V")
print(value)' "$@"
}

# same_public_key CERT KEY: the certificate and the private key (files) belong together.
same_public_key() {
    [[ -s $1 && -s $2 ]] &&
        [[ $(openssl x509 -in "$1" -noout -pubkey 2>/dev/null) == "$(openssl pkey -in "$2" -pubout 2>/dev/null)" ]]
}

# claim_kept DISK TAG: what every unprovisioned first boot must leave.
claim_kept() {
    local img=$1 tag=$2
    check "$tag: claim key kept" img_exists "$img" "$CLAIM_KEY"
    check "$tag: claim certificate kept" img_exists "$img" "$CLAIM_CERT"
    check "$tag: config template kept" img_exists "$img" "$CONTRACT_CONFIG_TEMPLATE"
    check "$tag: unit still enabled" img_exists "$img" "$CONTRACT_UNIT_LINK"
    check_not "$tag: no done marker" img_exists "$img" "$CONTRACT_DONE_MARKER"
    check_eq "$tag: no thing name in the nucleus config" "$(tlog_value "$img" system thingName)" ""
}

# assert_provisioned CONSOLE DISK SERIAL TAG: the happy path, on the device and in the account.
assert_provisioned() {
    local log=$1 img=$2 serial=$3 tag=$4 d=$W/check-$4 plan
    mkdir -p "$d"
    check "$tag: first boot succeeded" grep -qa 'FIELD-DONE firstboot=succeeded' "$log"
    check "$tag: greengrass.service active at the end" grep -qa 'FIELD-DONE .*greengrass=active' "$log"
    check "$tag: greengrass.service enabled" img_exists "$img" /etc/systemd/system/multi-user.target.wants/greengrass.service
    check "$tag: the nucleus provisioned over MQTT/TLS" grep -qa 'FIELD-NUCLEUS provisioned' "$log"
    # in the account (moto): the thing, in the thing group, with the device's certificate
    check "$tag: thing $serial registered in moto" iot_thing_exists "$serial"
    check "$tag: thing $serial in thing group $IOT_THING_GROUP" iot_thing_in_group "$serial"
    iot_thing_cert_pem "$serial" >"$d/account.pem" 2>/dev/null || true
    img_cat "$img" "$GG/thingCert.crt" >"$d/thingCert.crt"
    img_cat "$img" "$GG/privKey.key" >"$d/privKey.key"
    check_eq "$tag: the device holds the certificate attached to its thing" \
        "$(openssl x509 -in "$d/thingCert.crt" -noout -fingerprint -sha256 2>&1)" \
        "$(openssl x509 -in "$d/account.pem" -noout -fingerprint -sha256 2>&1)"
    check "$tag: device certificate signed by the test CA" openssl verify -CAfile "$W/iot/ca.pem" "$d/thingCert.crt"
    check "$tag: device key matches its certificate" same_public_key "$d/thingCert.crt" "$d/privKey.key"
    check_not "$tag: device certificate is not the claim" cmp -s "$d/thingCert.crt" "$W/claim.pem.crt"
    check "$tag: device key mode 0600" grep -q 'Mode:  0600' < <(debugfs -R "stat $GG/privKey.key" "$(rootfs_spec "$img")" 2>/dev/null)
    # what the nucleus recorded (config.tlog at once; effectiveConfig.yaml when it shut down)
    check_eq "$tag: system.thingName" "$(tlog_value "$img" system thingName)" "$serial"
    check_eq "$tag: system.certificateFilePath" "$(tlog_value "$img" system certificateFilePath)" "$GG/thingCert.crt"
    check_eq "$tag: system.privateKeyPath" "$(tlog_value "$img" system privateKeyPath)" "$GG/privKey.key"
    check "$tag: effectiveConfig.yaml names the thing" grep -q "\"thingName\": \"$serial\"" < <(img_cat "$img" "$GG/config/effectiveConfig.yaml")
    # the broker saw the claim certificate (signed by the test CA) connect
    check "$tag: the broker authenticated the claim certificate" grep -qF "u'field-test-claim'" "$W/iot/mosquitto.log"
    # imgbuild cloud devices sync --dry-run lists the new thing (the binary under test, against moto)
    printf '# field test allowlist\n%s\n' "$serial" >"$d/allowlist.txt"
    plan=$("$IMGBUILD_BIN" cloud devices sync --allowlist "$d/allowlist.txt" --thing-group "$IOT_THING_GROUP" --dry-run 2>&1 || true)
    echo "$plan" >"$d/devices-sync.txt"
    check "$tag: imgbuild cloud devices sync --dry-run lists $serial" grep -qE "keep +$serial\$" <<<"$plan"
    # first boot removed the claim only now
    check_not "$tag: claim key deleted" img_exists "$img" "$CLAIM_KEY"
    check_not "$tag: claim certificate deleted" img_exists "$img" "$CLAIM_CERT"
    check_not "$tag: rendered config deleted" img_exists "$img" "$CONTRACT_WORK_DIR/config.yaml"
    check_not "$tag: config template deleted" img_exists "$img" "$CONTRACT_CONFIG_TEMPLATE"
    check_not "$tag: pre-seed directory deleted" img_exists "$img" "$CONTRACT_PRESEED_DIR"
    check "$tag: root CA kept" img_exists "$img" "$ROOT_CA_PATH"
    check "$tag: done marker" img_exists "$img" "$CONTRACT_DONE_MARKER"
    check_not "$tag: first-boot unit disabled" img_exists "$img" "$CONTRACT_UNIT_LINK"
}

# img_replace DISK PATH LOCAL MODE: PATH in the image's root file system replaced by LOCAL, root-owned
# with MODE (debugfs; `write` neither overwrites nor sets owner and mode).
img_replace() {
    local spec
    spec=$(rootfs_spec "$1")
    debugfs -w -R "rm $2" "$spec" >/dev/null 2>&1
    printf '%s\n' "write $3 $2" "sif $2 mode 0100$4" "sif $2 uid 0" "sif $2 gid 0" |
        debugfs -w -f - "$spec" >/dev/null 2>&1
    cmp -s "$3" <(img_cat "$1" "$2")
}

# set_env DISK KEY VALUE: KEY=VALUE in the image's first-boot settings ($CONTRACT_ENV_FILE).
set_env() {
    local tmp=$W/firstboot.env
    img_cat "$1" "$CONTRACT_ENV_FILE" | grep -v "^$2=" >"$tmp"
    printf '%s=%s\n' "$2" "$3" >>"$tmp"
    img_replace "$1" "$CONTRACT_ENV_FILE" "$tmp" 600
}

# old_order DISK: the order before issue 11 - the claim deleted as soon as greengrass.service is
# active - made in the image with debugfs by taking out the step that waits for proof of
# provisioning (first-boot script) and the finish step's own guard that refuses to delete the claim
# without that step's marker (lib/steps.sh); every other step is the current code.
old_order() {
    # shellcheck disable=SC2016 # the literal line of lib/steps.sh
    local d=$CONTRACT_FIRSTBOOT_DIR guard='    [[ -e $STATE_DIR/provision.done ]] || die '
    img_cat "$1" "$d/imgbuild-firstboot" >"$W/firstboot-new"
    grep -qx '    run_step provision' "$W/firstboot-new" || return 1
    grep -vx '    run_step provision' "$W/firstboot-new" >"$W/firstboot-old"
    img_cat "$1" "$d/lib/steps.sh" >"$W/steps-new"
    [[ $(grep -cF "$guard" "$W/steps-new") == 1 ]] || return 1
    grep -vF "$guard" "$W/steps-new" >"$W/steps-old"
    img_replace "$1" "$d/imgbuild-firstboot" "$W/firstboot-old" 755 &&
        img_replace "$1" "$d/lib/steps.sh" "$W/steps-old" 644 && fs_clean "$1"
}

# responder_count PATTERN: lines of the responder's log matching PATTERN.
responder_count() {
    grep -c "$1" "$W/iot/responder.log" 2>/dev/null || true
}

# responder_restart: the responder again, now accepting every registration.
responder_restart() {
    if [[ -n $RESPONDER_PID ]]; then
        kill "$RESPONDER_PID" 2>/dev/null || true
        wait "$RESPONDER_PID" 2>/dev/null || true
    fi
    iot_responder_start
}

# ---------------------------------------------------------------- main
main() {
    setup_host
    base_image
    imgbuild_binary
    note "moto server (tests/cloud/moto.sh): the account"
    iot_moto_start
    build_image
    boot_files "$W/built.img"
    assert_built_image
    ROOT_CA_PATH=$(root_ca_of "$W/built.img")
    check "built image: the plugin's rootCaPath ($ROOT_CA_PATH) holds the test CA" \
        cmp -s "$W/iot/ca.pem" <(img_cat "$W/built.img" "${ROOT_CA_PATH:-/nonexistent}")
    check "built image: /etc/hosts maps the data endpoint to the forwarded address" \
        grep -qE "^${IOT_GUEST_ADDR}[[:space:]]+${IOT_ENDPOINT}\$" < <(img_cat "$W/built.img" /etc/hosts)
    local disk=$W/virt.img log

    # One device (disk) through four boots: (b) broker down, (c) registration rejected, (a) provisioned,
    # then a boot where nothing runs.

    # (b) virt, boot 1: the broker is down; first boot must keep the claim and fail, bounded
    cp --sparse=always "$W/built.img" "$disk"
    BROKER_PORT=$(free_port)
    log=$W/console-virt-broker-down.log
    boot_virt virt-broker-down "$disk" "imgbuild.serial=$SERIAL_VIRT" ||
        fail "virt-broker-down: guest powered off within ${BOOT_TIMEOUT}s"
    assert_common "$log" "$disk" "$SERIAL_VIRT" virt-broker-down
    check "virt-broker-down: first boot reported failed" grep -qa 'FIELD-DONE firstboot=failed' "$log"
    check "virt-broker-down: the stand-in installer ran and exited" grep -qa "FIELD-STANDIN OK serial=$SERIAL_VIRT" "$log"
    check "virt-broker-down: the nucleus retried connecting" grep -q 'Retrying MQTT connect which failed in provisioning plugin' < <(nucleus_log "$disk")
    claim_kept "$disk" virt-broker-down
    check_not "virt-broker-down: no thing in moto" iot_thing_exists "$SERIAL_VIRT"
    check_not "virt-broker-down: no device certificate" img_exists "$disk" "$GG/thingCert.crt"
    journal_of "$disk"
    check "virt-broker-down: the timeout is in the journal at priority err" \
        grep -q 'GG_PROVISION_TIMEOUT' < <(jctl -t imgbuild-firstboot -p err -o cat)

    # (c) virt, boot 2: broker up, the template (a pre-provisioning hook) rejects this serial
    check "virt-rejected: short GG_PROVISION_TIMEOUT written into the image" set_env "$disk" GG_PROVISION_TIMEOUT "$PROVISION_TIMEOUT_SHORT"
    iot_broker_start
    iot_responder_start "$SERIAL_VIRT"
    log=$W/console-virt-rejected.log
    boot_virt virt-rejected "$disk" "imgbuild.serial=$SERIAL_VIRT" || fail "virt-rejected: guest powered off within ${BOOT_TIMEOUT}s"
    check "virt-rejected: first boot reported failed" grep -qa 'FIELD-DONE firstboot=failed' "$log"
    check "virt-rejected: the responder rejected RegisterThing" grep -q "rejected: 403 AccessDenied" "$W/iot/responder.log"
    check "virt-rejected: the nucleus logged the rejection" grep -q "Pre-provisioning hook denied provisioning" < <(nucleus_log "$disk")
    claim_kept "$disk" virt-rejected
    check_not "virt-rejected: no thing in moto" iot_thing_exists "$SERIAL_VIRT"
    journal_of "$disk"
    check "virt-rejected: the rejection message in the journal (priority err)" \
        grep -q "Pre-provisioning hook denied provisioning of serial number $SERIAL_VIRT" < <(jctl -t imgbuild-firstboot -p err -o cat)
    check "virt-rejected: e2fsck -fn clean" fs_clean "$disk"

    # (a) virt, boot 3: the registration is accepted; this boot provisions
    check "virt-provision: GG_PROVISION_TIMEOUT back to ${PROVISION_TIMEOUT}s" set_env "$disk" GG_PROVISION_TIMEOUT "$PROVISION_TIMEOUT"
    responder_restart
    log=$W/console-virt-provision.log
    boot_virt virt-provision "$disk" "imgbuild.serial=$SERIAL_VIRT" || fail "virt-provision: guest powered off within ${BOOT_TIMEOUT}s"
    check_eq "virt-provision: imgbuild-firstboot started once" "$(console_count "$log" 'Starting .*imgbuild-firstboo')" 1
    check "virt-provision: packages step skipped" grep -qa 'imgbuild-firstboot\[packages\]: already done, skipping' "$log"
    assert_provisioned "$log" "$disk" "$SERIAL_VIRT" virt-provision
    check_eq "virt-provision: one thing registered" "$(responder_count 'RegisterThing: thing')" 1
    check "virt-provision: e2fsck -fn clean" fs_clean "$disk"

    # virt, boot 4: nothing happens any more; the nucleus does not provision again
    local issued
    issued=$(responder_count 'CreateKeysAndCertificate: issued')
    log=$W/console-virt-again.log
    boot_virt virt-again "$disk" "imgbuild.serial=$SERIAL_VIRT" || fail "virt-again: guest powered off within ${BOOT_TIMEOUT}s"
    check "virt-again: guest reported" grep -qa 'FIELD-DONE' "$log"
    check_eq "virt-again: imgbuild-firstboot not started" "$(console_count "$log" 'imgbuild-firstboo|imgbuild first boot:')" 0
    check "virt-again: greengrass.service active" grep -qa 'FIELD-DONE .*greengrass=active' "$log"
    check "virt-again: the nucleus started provisioned" grep -qa 'FIELD-NUCLEUS already-provisioned' "$log"
    check_eq "virt-again: no further certificate issued" "$(responder_count 'CreateKeysAndCertificate: issued')" "$issued"
    journal_of "$disk"
    check_eq "virt-again: 4 boots in the journal" "$(jctl --list-boots | wc -l)" 4
    check_eq "virt-again: no first-boot lines in the last boot's journal" "$(jctl -b 0 -t imgbuild-firstboot -o cat | wc -l)" 0
    check "virt-again: e2fsck -fn clean" fs_clean "$disk"
    rm -f "$disk"

    # (d) the old order (claim deleted as soon as greengrass.service is active) on a fresh copy:
    # first boot "succeeds", the nucleus then finds no claim, the device is lost; the checks catch it
    disk=$W/virt-old-order.img
    cp --sparse=always "$W/built.img" "$disk"
    check "virt-old-order: provision step and finish guard taken out of the copy's first-boot scripts" old_order "$disk"
    log=$W/console-virt-old-order.log
    boot_virt virt-old-order "$disk" "imgbuild.serial=OLDORDER1" || fail "virt-old-order: guest powered off within ${BOOT_TIMEOUT}s"
    check "virt-old-order: first boot reported success" grep -qa 'FIELD-DONE firstboot=succeeded' "$log"
    check_not "virt-old-order: claim key deleted" img_exists "$disk" "$CLAIM_KEY"
    check "virt-old-order: the nucleus could not provision" grep -qa 'FIELD-NUCLEUS unprovisioned' "$log"
    check "virt-old-order: the plugin failed on the missing claim" grep -q 'Exception encountered while getting device identity information' < <(nucleus_log "$disk")
    check_not "virt-old-order: the happy-path check 'thing registered in moto' fails" iot_thing_exists OLDORDER1
    check_not "virt-old-order: the happy-path check 'device certificate' fails" img_exists "$disk" "$GG/thingCert.crt"
    rm -f "$disk"

    # raspi4b (optional): a fresh copy, serial from the device tree. No network on this machine
    # model: first boot must end unprovisioned, the claim kept.
    if [[ ${FIELD_RASPI4B:-0} == 1 ]]; then
        disk=$W/raspi4b.img
        cp --sparse=always "$W/built.img" "$disk"
        check "raspi4b: short GG_PROVISION_TIMEOUT written into the copy" set_env "$disk" GG_PROVISION_TIMEOUT "$PROVISION_TIMEOUT_SHORT"
        log=$W/console-raspi4b.log
        boot_raspi4b raspi4b "$disk" || fail "raspi4b: guest powered off within ${BOOT_TIMEOUT}s"
        assert_common "$log" "$disk" "$SERIAL_DT" raspi4b
        check "raspi4b: serial came from the device tree" grep -qa "serial number '$SERIAL_DT' (from devicetree)" "$log"
        check "raspi4b: first boot reported failed (no network)" grep -qa 'FIELD-DONE firstboot=failed' "$log"
        claim_kept "$disk" raspi4b
        rm -f "$disk"
    fi
}

main
summary
