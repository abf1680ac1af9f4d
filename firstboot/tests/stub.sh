#!/bin/bash
# A stand-in for a system command, installed under the command's name (symlink) on the tests' PATH.
# It appends "NAME ARGS..." to $STUB_LOG, keeps its last argv (NUL-separated) in $STUB_STATE/NAME.argv,
# fails with status 1 when "NAME ARGS..." starts with $STUB_FAIL, and imitates the few outputs the
# first-boot scripts read.
# It also stands in for the Greengrass nucleus, which provisions *after* the installer exited: the java stub
# (the installer) only marks the nucleus installed; each later `sleep` lets time pass, and the nucleus then
# acts as $STUB_NUCLEUS says (see nucleus_acts below). What it writes follows the real nucleus and
# FleetProvisioningByClaim plugin: thingCert.crt/privKey.key under the root path (plugin DEFAULT_CERT_FILE,
# DEFAULT_KEY_FILE), system.* lines appended to config/config.tlog (ConfigurationWriter Tlogline JSON),
# config/effectiveConfig.yaml written at launch (Kernel.writeEffectiveConfig), and greengrass.log lines in
# the text format of aws-greengrass-logging-java (GreengrassLogMessage.getTextMessage).
set -euo pipefail
name=${0##*/}
{
    printf '%s' "$name"
    printf ' %s' "$@"
    printf '\n'
} >>"$STUB_LOG"
printf '%s\0' "$@" >"$STUB_STATE/$name.argv"
if [[ -n ${STUB_FAIL:-} && "$name $*" == "$STUB_FAIL"* ]]; then
    echo "$name: failing as asked by STUB_FAIL" >&2
    exit 1
fi

# option_value OPTION ARGS...: the argument following OPTION.
option_value() {
    local option=$1
    shift
    while (($# > 1)); do
        if [[ $1 == "$option" ]]; then
            printf '%s' "$2"
            return 0
        fi
        shift
    done
    return 1
}

# gg_log LEVEL LOGGER MESSAGE: one greengrass.log line.
gg_log() {
    printf '2026-12-04T10:00:00.000Z [%s] (pool-2-thread-1) %s: %s. {}\n' "$1" "$2" "$3" >>"$gg/logs/greengrass.log"
}

# tlog_system KEY VALUE: the Tlogline the nucleus appends when system.KEY changes.
tlog_system() {
    printf '{"TS":1764842400000,"TP":["system","%s"],"W":"changed","V":"%s"}\n' "$1" "$2" >>"$gg/config/config.tlog"
}

# nucleus_acts: what the nucleus has done by the time a `sleep` returns, per $STUB_NUCLEUS:
#   provision (default)  device certificate and key written, system.* recorded in config.tlog
#   yaml                 the same, recorded only in effectiveConfig.yaml (as after a nucleus restart)
#   never                no answer from AWS IoT: the plugin keeps retrying its MQTT connection
#   error                the template rejected the registration: the plugin and the nucleus log errors
#   claim                system.* names the claim certificate and key (must be refused)
#   missing              system.* names device files that do not exist (must be refused)
nucleus_acts() {
    gg=${IMGBUILD_ROOT:-}/greengrass/v2
    mkdir -p "$gg/config" "$gg/logs"
    case ${STUB_NUCLEUS:-provision} in
    provision | yaml)
        local thing=${STUB_THING:-device-thing}
        printf '%s\n' '-----BEGIN CERTIFICATE-----' 'device certificate' '-----END CERTIFICATE-----' >"$gg/thingCert.crt"
        printf '%s\n' '-----BEGIN RSA PRIVATE KEY-----' 'device key' '-----END RSA PRIVATE KEY-----' >"$gg/privKey.key"
        chmod 0600 "$gg/privKey.key"
        if [[ ${STUB_NUCLEUS:-provision} == provision ]]; then
            tlog_system thingName "${STUB_THING:-device-thing}"
            tlog_system certificateFilePath /greengrass/v2/thingCert.crt
            tlog_system privateKeyPath /greengrass/v2/privKey.key
            tlog_system rootCaPath /greengrass/v2/AmazonRootCA1.pem
        else
            printf '%s\n' '---' 'services:' '  main:' '    dependencies: []' 'system:' \
                '  certificateFilePath: "/greengrass/v2/thingCert.crt"' '  privateKeyPath: "/greengrass/v2/privKey.key"' \
                '  rootCaPath: "/greengrass/v2/AmazonRootCA1.pem"' '  rootpath: "/greengrass/v2"' \
                "  thingName: \"${thing//\"/\\\"}\"" >"$gg/config/effectiveConfig.yaml"
        fi
        ;;
    never)
        gg_log INFO com.aws.greengrass.FleetProvisioningByClaimPlugin 'Retrying MQTT connect which failed in provisioning plugin'
        ;;
    error)
        gg_log ERROR com.aws.greengrass.FleetProvisioningByClaimPlugin 'Exception encountered while getting device identity information'
        printf '%s\n' 'com.aws.greengrass.DeviceProvisioningRuntimeException: Caught exception during registering Iot Thing' \
            $'\tat com.aws.greengrass.FutureExceptionHandler.getFutureAfterCompletion(FutureExceptionHandler.java:40)' \
            'Caused by: RegisterThing rejected: InvalidRequestException: SerialNumber not on the allowlist' \
            $'\tat java.base/java.util.concurrent.CompletableFuture.get(CompletableFuture.java:2070)' >>"$gg/logs/greengrass.log"
        gg_log ERROR com.aws.greengrass.lifecyclemanager.KernelLifecycle \
            'Caught exception while running provisioning plugin. Moving on to run Greengrass without provisioning'
        ;;
    claim)
        tlog_system thingName device-thing
        tlog_system certificateFilePath /greengrass/v2/claim.pem.crt
        tlog_system privateKeyPath /greengrass/v2/claim.private.pem.key
        ;;
    missing)
        tlog_system thingName device-thing
        tlog_system certificateFilePath /greengrass/v2/thingCert.crt
        tlog_system privateKeyPath /greengrass/v2/privKey.key
        ;;
    esac
}

case $name in
sleep)
    if [[ -e $STUB_STATE/nucleus-installed ]]; then nucleus_acts; fi
    ;;
curl)
    # Serve the URL's last path component from $STUB_DOWNLOADS; a missing file is a 404.
    url=${!#}
    source=$STUB_DOWNLOADS/${url##*/}
    [[ -f $source ]] || { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
    cp "$source" "$(option_value --output "$@")"
    ;;
unzip)
    # The nucleus zip is opaque test data: lay out what the real archive contains that we use.
    dir=$(option_value -d "$@")
    mkdir -p "$dir/lib"
    echo 'stand-in Greengrass.jar' >"$dir/lib/Greengrass.jar"
    ;;
jarsigner)
    printf '%s\n' "${STUB_JARSIGNER_OUTPUT:-jar verified.}"
    ;;
getent)
    # Known entries: space-separated DATABASE:NAME words in $STUB_GETENT_KNOWN.
    [[ " ${STUB_GETENT_KNOWN:-} " == *" $1:$2 "* ]] || exit 2
    ;;
dpkg)
    if [[ $1 == --print-architecture ]]; then echo arm64; fi
    ;;
dpkg-query)
    # dpkg-query -W -f=FORMAT PACKAGE...: "PACKAGE installed", or not-installed for $STUB_NOT_INSTALLED.
    shift 2
    for package in "$@"; do
        state=installed
        if [[ " ${STUB_NOT_INSTALLED:-} " == *" $package "* ]]; then state=not-installed; fi
        printf '%s %s\n' "$package" "$state"
    done
    ;;
java)
    # Keep the --init-config file as the installer saw it (first boot deletes it afterwards). Like the real
    # installer with --setup-system-service true: the service is set up and started, the nucleus has not
    # provisioned yet when it exits (it writes its launch-time effectiveConfig.yaml, without system.thingName).
    cp "$(option_value --init-config "$@")" "$STUB_STATE/java-init-config.yaml"
    gg=${IMGBUILD_ROOT:-}/greengrass/v2
    mkdir -p "$gg/config" "$gg/logs"
    printf '%s\n' '---' 'services:' '  main:' '    dependencies: []' 'system:' \
        '  rootpath: "/greengrass/v2"' >"$gg/config/effectiveConfig.yaml"
    : >"$STUB_STATE/nucleus-installed"
    ;;
esac
