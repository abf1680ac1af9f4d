# shellcheck shell=bash
# Fixtures for firstboot.bats: a scratch root laid out like a freshly built image, a PATH holding only
# stub commands (tests/stub.sh) and a few real coreutils, and the calls the happy path must make.
# bats' `run` sets $status and $output:
# shellcheck disable=SC2154

FIRSTBOOT_SRC=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
# The paths the build and the scripts share (CONTRACT_*), generated from the Rust constants.
# shellcheck source-path=SCRIPTDIR source=../lib/contract.sh
source "$FIRSTBOOT_SRC/lib/contract.sh"
STUBBED_COMMANDS=(apt-get dpkg dpkg-query systemctl java curl useradd groupadd usermod getent visudo jarsigner
    unzip sleep)
REAL_COMMANDS=(mkdir rm mv cp chmod sha256sum date tail stat cmp)
STEPS=(serial clock packages users download config install service provision finish)
DT_SERIAL=100000002d9d3bd5
NUCLEUS_VERSION=2.16.0
PLUGIN_VERSION=1.2.2
RELEASES=$CONTRACT_RELEASES_URL
CURL_OPTIONS='--fail --silent --show-error --location --retry 5 --retry-delay 10 --retry-connrefused --connect-timeout 30 --max-time 900'

# setup_scratch: build the scratch root, the stub PATH and the download server's files.
setup_scratch() {
    R=$BATS_TEST_TMPDIR/root
    BIN=$BATS_TEST_TMPDIR/bin
    STUB_STATE=$BATS_TEST_TMPDIR/stub-state
    STUB_LOG=$STUB_STATE/calls.log
    DOWNLOADS=$BATS_TEST_TMPDIR/downloads
    FIXTURE=$BATS_TEST_TMPDIR/fixture
    STATE=$R$CONTRACT_STATE_DIR
    WORK=$STATE/work
    GG=$R$CONTRACT_GG_ROOT
    mkdir -p "$BIN" "$STUB_STATE" "$DOWNLOADS" "$FIXTURE"
    local command
    for command in "${STUBBED_COMMANDS[@]}"; do ln -s "$FIRSTBOOT_SRC/tests/stub.sh" "$BIN/$command"; done
    for command in "${REAL_COMMANDS[@]}"; do ln -s "$(command -v "$command")" "$BIN/$command"; done
    install_firstboot
    make_artifacts
    make_image_files
}

# install_firstboot: copy the scripts where the image carries them (README "Installed files").
install_firstboot() {
    local dir=$R$CONTRACT_FIRSTBOOT_DIR
    mkdir -p "$dir/lib" "$R${CONTRACT_UNIT_PATH%/*}"
    cp "$FIRSTBOOT_SRC/imgbuild-firstboot" "$dir/"
    cp "$FIRSTBOOT_SRC/lib/contract.sh" "$FIRSTBOOT_SRC/lib/common.sh" "$FIRSTBOOT_SRC/lib/steps.sh" "$dir/lib/"
    cp "$FIRSTBOOT_SRC/imgbuild-firstboot.service" "$R$CONTRACT_UNIT_PATH"
}

# make_artifacts: stand-in nucleus zip and plugin jar, served by the curl stub.
make_artifacts() {
    head -c 4096 /dev/urandom >"$DOWNLOADS/greengrass-$NUCLEUS_VERSION.zip"
    head -c 2048 /dev/urandom >"$DOWNLOADS/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
    NUCLEUS_SHA256=$(sha256sum "$DOWNLOADS/greengrass-$NUCLEUS_VERSION.zip" | cut -d' ' -f1)
    PLUGIN_SHA256=$(sha256sum "$DOWNLOADS/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" | cut -d' ' -f1)
}

# make_image_files: what the build side injects, plus the device's serial sources and a synced clock.
make_image_files() {
    mkdir -p "$R${CONTRACT_ENV_FILE%/*}" "$GG" "$R/proc" "$R/sys/firmware/devicetree/base" \
        "$R/run/systemd/timesync"
    cat >"$R$CONTRACT_ENV_FILE" <<EOF
NUCLEUS_VERSION=$NUCLEUS_VERSION
NUCLEUS_SHA256=$NUCLEUS_SHA256
PLUGIN_VERSION=$PLUGIN_VERSION
PLUGIN_SHA256=$PLUGIN_SHA256
DOCKER_FLAVOR=debian
JAVA_PACKAGE=openjdk-17-jre-headless
GG_ROOT=$CONTRACT_GG_ROOT
BACKOFF_BASE_SECONDS=0
EOF
    cat >"$R$CONTRACT_CONFIG_TEMPLATE" <<EOF
---
services:
  aws.greengrass.Nucleus:
    version: "2.16.0"
  aws.greengrass.FleetProvisioningByClaim:
    configuration:
      rootPath: "$CONTRACT_GG_ROOT"
      awsRegion: "eu-west-1"
      iotDataEndpoint: "abc123-ats.iot.eu-west-1.amazonaws.com"
      iotCredentialEndpoint: "abc123.credentials.iot.eu-west-1.amazonaws.com"
      iotRoleAlias: "GreengrassCoreTokenExchangeRoleAlias"
      provisioningTemplate: "GreengrassFleetProvisioningTemplate"
      claimCertificatePath: "$CONTRACT_GG_ROOT/$CONTRACT_CLAIM_CERT_NAME"
      claimCertificatePrivateKeyPath: "$CONTRACT_GG_ROOT/$CONTRACT_CLAIM_KEY_NAME"
      rootCaPath: "$CONTRACT_GG_ROOT/$CONTRACT_ROOT_CA_NAME"
      templateParameters:
        ThingName: "device-$CONTRACT_SERIAL_PLACEHOLDER"
        SerialNumber: "$CONTRACT_SERIAL_PLACEHOLDER"
EOF
    printf '%s\n' '-----BEGIN CERTIFICATE-----' 'stand-in claim certificate' '-----END CERTIFICATE-----' \
        >"$GG/claim.pem.crt"
    printf '%s\n' '-----BEGIN PRIVATE KEY-----' 'stand-in claim key' '-----END PRIVATE KEY-----' \
        >"$GG/claim.private.pem.key"
    chmod 0600 "$GG/claim.private.pem.key"
    printf '%s\n' '-----BEGIN CERTIFICATE-----' 'stand-in Amazon Root CA 1' '-----END CERTIFICATE-----' \
        >"$GG/AmazonRootCA1.pem"
    cp "$GG/claim.pem.crt" "$GG/claim.private.pem.key" "$R$CONTRACT_CONFIG_TEMPLATE" "$FIXTURE/"
    printf '%s\0' "$DT_SERIAL" >"$R/sys/firmware/devicetree/base/serial-number"
    echo 'console=ttyAMA0,115200 root=LABEL=RASPIROOT rw' >"$R/proc/cmdline"
    : >"$R/run/systemd/timesync/synchronized"
}

# set_setting KEY VALUE: override a build-time setting (the last assignment wins when sourced).
set_setting() {
    printf '%s=%s\n' "$1" "$2" >>"$R$CONTRACT_ENV_FILE"
}

# run_firstboot [VAR=VALUE...]: run the installed entry script with an empty call log, a clean
# environment and the stub PATH; extra assignments go into its environment.
run_firstboot() {
    : >"$STUB_LOG"
    run /usr/bin/env -i PATH="$BIN" IMGBUILD_ROOT="$R" STUB_LOG="$STUB_LOG" STUB_STATE="$STUB_STATE" \
        STUB_DOWNLOADS="$DOWNLOADS" STUB_GETENT_KNOWN="group:docker" "$@" \
        "$R$CONTRACT_FIRSTBOOT_SCRIPT"
}

# expected_step_calls STEP: the commands STEP runs on the happy path (debian Docker, network, no proxy).
expected_step_calls() {
    local apt='apt-get -o DPkg::Lock::Timeout=300'
    case $1 in
    packages)
        printf '%s\n' 'dpkg --configure -a' "$apt update" \
            "$apt install -y --no-install-recommends docker.io openjdk-17-jre-headless sudo unzip curl ca-certificates"
        ;;
    users)
        printf '%s\n' 'getent group ggc_group' 'groupadd --system ggc_group' 'getent passwd ggc_user' \
            'useradd --system --create-home --gid ggc_group ggc_user' 'getent group docker' \
            'usermod -aG docker ggc_user' "visudo -cf $R/etc/sudoers.d/imgbuild-greengrass.new"
        ;;
    download)
        printf '%s\n' \
            "curl $CURL_OPTIONS --output $WORK/greengrass-$NUCLEUS_VERSION.zip.part $RELEASES/greengrass-$NUCLEUS_VERSION.zip" \
            "curl $CURL_OPTIONS --output $WORK/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar.part $RELEASES/aws-greengrass-FleetProvisioningByClaim/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" \
            "jarsigner -verify $WORK/greengrass-$NUCLEUS_VERSION.zip" \
            "unzip -q -o $WORK/greengrass-$NUCLEUS_VERSION.zip -d $WORK/GreengrassInstaller"
        ;;
    install)
        printf '%s\n' "java $(expected_java_args | tr '\0' ' ' | sed 's/ $//')"
        ;;
    service)
        printf '%s\n' 'systemctl is-active --quiet greengrass.service'
        ;;
    provision)
        # No proof yet right after the installer; the stub nucleus provisions while first boot polls.
        printf '%s\n' 'sleep 10'
        ;;
    finish)
        printf '%s\n' 'systemctl disable imgbuild-firstboot.service'
        ;;
    esac
}

# expected_java_args: the installer's exact argv, NUL-separated.
expected_java_args() {
    printf '%s\0' "-Droot=$R$CONTRACT_GG_ROOT" -Dlog.store=FILE -jar "$WORK/GreengrassInstaller/lib/Greengrass.jar" \
        --trusted-plugin "$WORK/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" --init-config "$WORK/config.yaml" \
        --component-default-user ggc_user:ggc_group --setup-system-service true
}

# expected_calls_from STEP: the happy path's calls from STEP to the end.
expected_calls_from() {
    local step started=''
    for step in "${STEPS[@]}"; do
        if [[ $step == "$1" ]]; then started=1; fi
        if [[ -n $started ]]; then expected_step_calls "$step"; fi
    done
}

# assert_calls EXPECTED: the call log equals EXPECTED (a diff is printed otherwise).
assert_calls() {
    diff -u <(printf '%s\n' "$1" | sed '/^$/d') "$STUB_LOG"
}

# assert_claim_material_kept: claim certificate, key and config template unchanged.
assert_claim_material_kept() {
    cmp "$FIXTURE/claim.pem.crt" "$GG/claim.pem.crt"
    cmp "$FIXTURE/claim.private.pem.key" "$GG/claim.private.pem.key"
    cmp "$FIXTURE/greengrass-config.yaml.in" "$R$CONTRACT_CONFIG_TEMPLATE"
    [[ $(stat -c %a "$GG/claim.private.pem.key") == 600 ]]
}

# assert_provisioned: the final state of a successful run.
assert_provisioned() {
    [[ -e $STATE/done ]]
    [[ ! -e $GG/claim.pem.crt && ! -e $GG/claim.private.pem.key ]]
    [[ ! -e $R$CONTRACT_CONFIG_TEMPLATE && ! -e $WORK ]]
    [[ -e $GG/AmazonRootCA1.pem ]]
    [[ -s $GG/thingCert.crt && -s $GG/privKey.key ]]
    grep -qx 'systemctl disable imgbuild-firstboot.service' "$STUB_LOG"
}

# assert_failed_at STEP: the last run failed in STEP, earlier steps are marked, nothing was deleted.
assert_failed_at() {
    local step
    [[ $status -ne 0 ]]
    [[ $output == *"step '$1' failed"* ]]
    for step in "${STEPS[@]}"; do
        [[ $step == "$1" ]] && break
        [[ $step == clock ]] || [[ -e $STATE/$step.done ]]
    done
    [[ ! -e $STATE/$1.done && ! -e $STATE/done ]]
    assert_claim_material_kept
    ! grep -q 'systemctl disable' "$STUB_LOG" || false
}

# fail_and_resume STEP VAR=VALUE...: a run with the given fault fails in STEP; the next run, without
# the fault, makes exactly the happy path's calls from STEP on and provisions the device.
fail_and_resume() {
    local step=$1
    shift
    run_firstboot "$@"
    assert_failed_at "$step"
    run_firstboot
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from "$step")"
    assert_provisioned
}
