# shellcheck shell=bash
# The first-boot steps. Each step_NAME runs in a subshell with errexit (see run_step in common.sh)
# and must be safe to run again after a partial run.

# ---------------------------------------------------------------- serial

# serial_from_cmdline: the value of the last imgbuild.serial= word of the kernel command line.
serial_from_cmdline() {
    local file=$R/proc/cmdline value='' word
    local -a words=()
    [[ -r $file ]] || return 0
    read -r -a words <"$file" || true
    for word in "${words[@]}"; do
        if [[ $word == imgbuild.serial=* ]]; then value=${word#imgbuild.serial=}; fi
    done
    printf '%s' "$value"
}

# serial_from_devicetree: /serial-number of the device tree, up to its terminating NUL.
serial_from_devicetree() {
    local file=$R/sys/firmware/devicetree/base/serial-number value=''
    [[ -r $file ]] || return 0
    IFS= read -r -d '' value <"$file" || true
    printf '%s' "$value"
}

# serial_from_cpuinfo: the "Serial" field of /proc/cpuinfo (Raspberry Pi kernels only).
serial_from_cpuinfo() {
    local file=$R/proc/cpuinfo key value
    [[ -r $file ]] || return 0
    while IFS=: read -r key value; do
        if [[ ${key//[[:space:]]/} == Serial ]]; then
            printf '%s' "$value"
            return 0
        fi
    done <"$file"
}

# serial_from_dmi: the DMI product serial (x86 and SystemReady arm64 boards).
serial_from_dmi() {
    local file=$R/sys/class/dmi/id/product_serial value=''
    [[ -r $file ]] || return 0
    IFS= read -r value <"$file" || true
    printf '%s' "$value"
}

# usable_serial VALUE: false for empty, all-zero and firmware placeholder serials.
usable_serial() {
    local value=${1,,}
    [[ -n $value && ! $value =~ ^0+$ ]] || return 1
    case $value in
    tobefilledbyoem | defaultstring | none | notspecified | notapplicable | systemserialnumber | 0123456789) return 1 ;;
    esac
}

step_serial() {
    local source serial
    for source in cmdline devicetree cpuinfo dmi; do
        serial=$("serial_from_$source")
        serial=${serial//[^A-Za-z0-9_-]/}
        if usable_serial "$serial"; then
            ((${#serial} <= 128)) || die "serial number from $source is longer than 128 characters"
            printf '%s\n' "$serial" >"$SERIAL_FILE"
            log "serial number '$serial' (from $source)"
            return 0
        fi
    done
    die "no serial number found (kernel command line imgbuild.serial=, device-tree serial-number," \
        "/proc/cpuinfo Serial, DMI product_serial): add imgbuild.serial=<serial> to the kernel command line"
}

# ---------------------------------------------------------------- clock

step_clock() {
    local synced=$R/run/systemd/timesync/synchronized waited=0 now
    while [[ ! -e $synced ]] && ((waited < CLOCK_WAIT_SECONDS)); do
        sleep 5
        waited=$((waited + 5))
    done
    if [[ -e $synced ]]; then
        log "clock synchronized by systemd-timesyncd"
        return 0
    fi
    now=$(date +%s)
    ((now >= BUILD_EPOCH)) || die "the clock reads $now (Unix time), before the image was built ($BUILD_EPOCH)," \
        "and NTP did not synchronize within ${CLOCK_WAIT_SECONDS}s: TLS would fail; give the device network access to NTP"
    log "NTP not synchronized within ${CLOCK_WAIT_SECONDS}s; the clock is after the image build time, continuing"
}

# ---------------------------------------------------------------- packages

# apt_get ARGS...: apt-get, non-interactive, waiting for the dpkg lock, through PROXY_URL when set.
apt_get() {
    local -a options=(-o DPkg::Lock::Timeout=300)
    if [[ -n $PROXY_URL ]]; then
        options+=(-o "Acquire::http::Proxy=$PROXY_URL" -o "Acquire::https::Proxy=$PROXY_URL")
    fi
    DEBIAN_FRONTEND=noninteractive apt-get "${options[@]}" "$@"
}

# required_packages: the Debian packages first boot installs, one per line.
required_packages() {
    if [[ $DOCKER_FLAVOR == docker-ce ]]; then
        printf '%s\n' docker-ce docker-ce-cli containerd.io
    else
        printf '%s\n' docker.io
    fi
    printf '%s\n' "$JAVA_PACKAGE" sudo unzip curl ca-certificates
}

# install_preseeded DEB...: install the pre-seeded .deb files with every package source switched off
# (nothing can be downloaded), then check that every required package ended up installed.
# Not `--no-download`: apt 2.6 then drops the local files from its fetch list and fails with
# "Internal Error, Pathname to install is not absolute '<name>.deb'" (apt-get -s does not show it).
install_preseeded() {
    local -a packages
    local status line
    mapfile -t packages < <(required_packages)
    log "installing $# pre-seeded package file(s) from $PRESEED_DEBS_DIR"
    apt_get -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null \
        install -y --no-install-recommends "$@"
    status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}") ||
        die "some of ${packages[*]} are unknown to dpkg after installing the pre-seeded .deb files"
    while read -r line; do
        [[ $line == *' installed' ]] || die "package '${line%% *}' is not installed after installing the" \
            "pre-seeded .deb files (state: ${line#* })"
    done <<<"$status"
}

# os_codename: VERSION_CODENAME from /etc/os-release.
os_codename() {
    local key value
    while IFS='=' read -r key value; do
        if [[ $key == VERSION_CODENAME ]]; then
            printf '%s' "${value//\"/}"
            return 0
        fi
    done <"$R/etc/os-release"
    die "no VERSION_CODENAME in $R/etc/os-release"
}

# add_docker_repository: Docker's apt repository (its key is downloaded unless the image ships it).
add_docker_repository() {
    local keyring=/etc/apt/keyrings/docker.asc arch codename
    retry "$APT_RETRIES" "$RETRY_DELAY_SECONDS" apt_get install -y --no-install-recommends ca-certificates curl
    if [[ ! -s $R$keyring ]]; then
        make_dir 0755 "$R${keyring%/*}"
        download https://download.docker.com/linux/debian/gpg "$R$keyring"
        chmod 0644 "$R$keyring"
    fi
    arch=$(dpkg --print-architecture)
    codename=$(os_codename)
    make_dir 0755 "$R/etc/apt/sources.list.d"
    printf 'deb [arch=%s signed-by=%s] https://download.docker.com/linux/debian %s stable\n' \
        "$arch" "$keyring" "$codename" >"$R/etc/apt/sources.list.d/docker.list"
    chmod 0644 "$R/etc/apt/sources.list.d/docker.list"
    retry "$APT_RETRIES" "$RETRY_DELAY_SECONDS" apt_get update
}

step_packages() {
    local -a packages debs
    mapfile -t packages < <(required_packages)
    dpkg --configure -a
    shopt -s nullglob # steps run in a subshell: this does not leak
    debs=("$PRESEED_DEBS_DIR"/*.deb)
    if ((${#debs[@]} > 0)); then
        install_preseeded "${debs[@]}"
        return 0
    fi
    log "no pre-seeded packages: installing ${packages[*]} from the network"
    retry "$APT_RETRIES" "$RETRY_DELAY_SECONDS" apt_get update
    if [[ $DOCKER_FLAVOR == docker-ce ]]; then add_docker_repository; fi
    retry "$APT_RETRIES" "$RETRY_DELAY_SECONDS" apt_get install -y --no-install-recommends "${packages[@]}"
}

# ---------------------------------------------------------------- users

step_users() {
    local staged=$SUDOERS_FILE.new
    getent group "$GG_GROUP" >/dev/null || groupadd --system "$GG_GROUP"
    getent passwd "$GG_USER" >/dev/null || useradd --system --create-home --gid "$GG_GROUP" "$GG_USER"
    getent group docker >/dev/null || groupadd --system docker
    usermod -aG docker "$GG_USER"
    # Greengrass runs component commands with "sudo -u ggc_user -g ggc_group": root must be allowed to
    # run commands as any user and group (AWS IoT Greengrass device requirements).
    make_dir 0750 "${SUDOERS_FILE%/*}"
    printf '%s\n' '# Written by imgbuild-firstboot: AWS IoT Greengrass runs components through sudo as ggc_user.' \
        'root    ALL=(ALL:ALL) ALL' >"$staged"
    chmod 0440 "$staged"
    if have visudo; then
        visudo -cf "$staged" >/dev/null || die "visudo rejected $staged"
    else
        log "visudo not found: $SUDOERS_FILE not syntax-checked"
    fi
    mv -f "$staged" "$SUDOERS_FILE"
}

# ---------------------------------------------------------------- download

# download URL DEST: fetch URL to DEST with retries, through PROXY_URL when set.
download() {
    local -a options=(--fail --silent --show-error --location --retry 5 --retry-delay 10 --retry-connrefused
        --connect-timeout 30 --max-time 900)
    if [[ -n $PROXY_URL ]]; then options+=(--proxy "$PROXY_URL"); fi
    curl "${options[@]}" --output "$2" "$1" || die "download of $1 failed (curl exit $?)"
}

# sha256_of FILE: the hex SHA-256 of FILE.
sha256_of() {
    local line
    line=$(sha256sum "$1")
    printf '%s' "${line%% *}"
}

# fetch_artifact URL SHA256 PRESEEDED DEST: DEST with the pinned SHA256, copied from PRESEEDED when it
# exists, else downloaded from URL. A file with another hash is deleted and the step fails.
fetch_artifact() {
    local url=$1 expected=$2 preseeded=$3 dest=$4 source actual
    if [[ -f $dest && $(sha256_of "$dest") == "$expected" ]]; then
        log "$dest already present and verified"
        return 0
    fi
    make_dir 0700 "${dest%/*}"
    if [[ -f $preseeded ]]; then
        source=$preseeded
        log "using pre-seeded $preseeded"
        cp -f "$preseeded" "$dest.part"
    else
        source=$url
        log "downloading $url"
        download "$url" "$dest.part"
    fi
    actual=$(sha256_of "$dest.part")
    if [[ $actual != "$expected" ]]; then
        rm -f "$dest.part"
        if [[ $source == "$preseeded" ]]; then rm -f "$preseeded"; fi
        die "sha256 mismatch for $source: got $actual, expected $expected; file deleted"
    fi
    mv -f "$dest.part" "$dest"
}

# verify_nucleus_signature: jarsigner -verify of the nucleus zip (a signed jar), when a JDK provides jarsigner.
verify_nucleus_signature() {
    local output
    if ! have jarsigner; then
        log "jarsigner not found ($JAVA_PACKAGE has no JDK tools): signature check of $NUCLEUS_ZIP skipped;" \
            "its pinned sha256 matched"
        return 0
    fi
    if ! output=$(jarsigner -verify "$NUCLEUS_ZIP" 2>&1) || [[ $output != *'jar verified.'* ]]; then
        rm -f "$NUCLEUS_ZIP"
        die "jarsigner -verify did not verify $NUCLEUS_ZIP (file deleted): ${output//$'\n'/ }"
    fi
    log "jarsigner verified the signature of $NUCLEUS_ZIP"
}

step_download() {
    fetch_artifact "$NUCLEUS_URL" "$NUCLEUS_SHA256" "$PRESEED_NUCLEUS" "$NUCLEUS_ZIP"
    fetch_artifact "$PLUGIN_URL" "$PLUGIN_SHA256" "$PRESEED_PLUGIN" "$PLUGIN_JAR"
    verify_nucleus_signature
    rm -rf "$INSTALLER_DIR"
    unzip -q -o "$NUCLEUS_ZIP" -d "$INSTALLER_DIR"
    [[ -f $INSTALLER_DIR/lib/Greengrass.jar ]] || die "$NUCLEUS_ZIP has no lib/Greengrass.jar"
}

# ---------------------------------------------------------------- config

step_config() {
    local path template serial
    for path in "$CLAIM_CERT" "$CLAIM_KEY" "$ROOT_CA" "$CONFIG_TEMPLATE"; do
        [[ -s $path ]] || die "$path is missing or empty: the image must be built with the claim material"
    done
    template=$(<"$CONFIG_TEMPLATE")
    [[ $template == *"$SERIAL_PLACEHOLDER"* ]] || die "$CONFIG_TEMPLATE has no $SERIAL_PLACEHOLDER placeholder"
    serial=$(<"$SERIAL_FILE")
    make_dir 0700 "$WORK_DIR"
    printf '%s\n' "${template//"$SERIAL_PLACEHOLDER"/$serial}" >"$INIT_CONFIG.part"
    mv -f "$INIT_CONFIG.part" "$INIT_CONFIG"
    log "rendered $INIT_CONFIG for serial number '$serial'"
}

# ---------------------------------------------------------------- install

step_install() {
    local jar=$INSTALLER_DIR/lib/Greengrass.jar
    java -Droot="$R$GG_ROOT" -Dlog.store=FILE -jar "$jar" \
        --trusted-plugin "$PLUGIN_JAR" \
        --init-config "$INIT_CONFIG" \
        --component-default-user "$GG_USER:$GG_GROUP" \
        --setup-system-service true ||
        die "the Greengrass installer failed (exit $?): see $GG_ROOT/logs/greengrass.log"
}

step_service() {
    local waited=0
    until systemctl is-active --quiet "$GG_UNIT_NAME"; do
        ((waited < GG_ACTIVE_TIMEOUT_SECONDS)) || die "$GG_UNIT_NAME is not active after ${waited}s:" \
            "see journalctl -u $GG_UNIT_NAME and $GG_ROOT/logs/greengrass.log"
        sleep 5
        waited=$((waited + 5))
    done
    log "$GG_UNIT_NAME is active"
}

# ---------------------------------------------------------------- provision
#
# The installer only writes and starts greengrass.service; the FleetProvisioningByClaim plugin runs later,
# inside the nucleus (aws-greengrass-nucleus KernelLifecycle.executeProvisioningPlugin: on an executor, after
# launch, up to MAX_PROVISIONING_PLUGIN_RETRY_ATTEMPTS = 3 tries). Only when the plugin returns does the
# nucleus merge its SystemConfiguration into the config (ProvisioningConfigUpdateHelper.
# updateSystemConfiguration): system.thingName (the RegisterThing answer), system.certificateFilePath and
# system.privateKeyPath (the plugin's certificatePath/privateKeyPath, default <rootPath>/thingCert.crt and
# privKey.key, written by FleetProvisioningByClaimPlugin.writeCertificate/writeKey) and system.rootCaPath.
# That change is appended at once to config/config.tlog (ConfigurationWriter, flushImmediately: one JSON
# Tlogline a line, {"TS":…,"TP":["system","thingName"],"W":"changed","V":"…"}); config/effectiveConfig.yaml
# (Kernel.writeEffectiveConfig, Jackson YAMLMapper) is written at launch — before the plugin finished — and
# again at shutdown, so it holds the proof only after a restart. Both are read; the tlog's last value wins.

# json_string_value TEXT: decode the JSON string body TEXT (no surrounding quotes); fails on escapes other
# than \" \\ \/ (a path or thing name never needs them).
json_string_value() {
    local rest=$1 out='' re='^([^\\]*)\\(.)(.*)$'
    while [[ $rest =~ $re ]]; do
        out+=${BASH_REMATCH[1]}
        case ${BASH_REMATCH[2]} in
        '"' | "\\" | '/') out+=${BASH_REMATCH[2]} ;;
        *) return 1 ;;
        esac
        rest=${BASH_REMATCH[3]}
    done
    printf '%s' "$out$rest"
}

# tlog_system_value KEY: the last value config.tlog records for system.KEY ("changed"; "removed" clears it).
# Prints nothing when the tlog does not name the key; fails (status 2) when it names it with a value that
# is not a plain string.
tlog_system_value() {
    local key=$1 line value='' found='' re_tp re_v
    [[ -r $CONFIG_TLOG ]] || return 0
    re_tp='"TP":\["system","'"$key"'"\]'
    re_v='"V":"(([^"\\]|\\.)*)"'
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ $re_tp ]] || continue
        found=1
        if [[ $line == *'"W":"removed"'* ]]; then
            value=''
        elif [[ $line == *'"W":"changed"'* ]]; then
            if [[ $line =~ $re_v ]]; then
                value=$(json_string_value "${BASH_REMATCH[1]}") || value=''
            else
                value=''
            fi
        fi
    done <"$CONFIG_TLOG"
    [[ -n $found ]] || return 0
    printf '%s' "$value"
}

# yaml_scalar TEXT: decode one YAML scalar as Jackson's YAMLGenerator writes it: "double-quoted" (with
# \" \\ \/ escapes), 'single-quoted' ('' for '), or plain (a trailing " #comment" dropped). null/~ → empty.
# TEXT of a double-quoted scalar may span lines (folded by YAMLGenerator's SPLIT_LINES): they are joined
# by the caller with a space, or with nothing after a line ending in an escaping backslash.
yaml_scalar() {
    local text=$1 re_dq='^"(([^"\\]|\\.)*)"[[:space:]]*(#.*)?$' re_sq="^'(([^']|'')*)'[[:space:]]*(#.*)?\$"
    if [[ $text == '"'* ]]; then
        [[ $text =~ $re_dq ]] || return 1
        json_string_value "${BASH_REMATCH[1]}"
    elif [[ $text == "'"* ]]; then
        [[ $text =~ $re_sq ]] || return 1
        text=${BASH_REMATCH[1]}
        printf '%s' "${text//\'\'/\'}"
    else
        text=${text%%[[:space:]]#*}
        text=${text%"${text##*[![:space:]]}"}
        case $text in null | '~' | '') ;; *) printf '%s' "$text" ;; esac
    fi
}

# dq_open TEXT: true when TEXT starts a double-quoted scalar that does not end on this line.
dq_open() {
    local re='^"(([^"\\]|\\.)*)"'
    [[ $1 == '"'* && ! $1 =~ $re ]]
}

# yaml_system_value KEY: system.KEY of effectiveConfig.yaml: a top-level "system:" mapping, its children at
# the indentation of its first child; nested mappings and other top-level keys are skipped.
yaml_system_value() {
    local key=$1 line stripped in_system='' indent='' text='' collecting='' re_key
    [[ -r $EFFECTIVE_CONFIG ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        if [[ -n $collecting ]]; then
            stripped=${line#"${line%%[![:space:]]*}"}
            if [[ $text == *"\\" ]]; then text=${text%"\\"}$stripped; else text+=" $stripped"; fi
            dq_open "$text" && continue
            yaml_scalar "$text" || true
            return 0
        fi
        [[ -n ${line//[[:space:]]/} && $line != '#'* && $line != '---'* ]] || continue
        if [[ $line != [[:space:]]* ]]; then
            in_system=''
            indent=''
            if [[ $line =~ ^system:[[:space:]]*$ ]]; then in_system=1; fi
            continue
        fi
        [[ -n $in_system ]] || continue
        if [[ -z $indent ]]; then indent=${line%%[![:space:]]*}; fi
        [[ $line == "$indent"[![:space:]]* ]] || continue
        re_key="^$indent$key:[[:space:]]*(.*)\$"
        if [[ $line =~ $re_key ]]; then
            text=${BASH_REMATCH[1]}
            if dq_open "$text"; then
                collecting=1
                continue
            fi
            yaml_scalar "$text" || true
            return 0
        fi
    done <"$EFFECTIVE_CONFIG"
}

# system_value KEY: system.KEY from config.tlog, else from effectiveConfig.yaml.
system_value() {
    local value
    value=$(tlog_system_value "$1")
    if [[ -z $value ]]; then value=$(yaml_system_value "$1"); fi
    printf '%s' "$value"
}

# provisioning_proof: true when the nucleus recorded a thing name and a device certificate and key that
# exist, are not empty, and are not the claim certificate and key. Sets PROOF (the thing name) or
# PROOF_MISSING (why not).
provisioning_proof() {
    local thing cert key
    thing=$(system_value thingName)
    cert=$(system_value certificateFilePath)
    key=$(system_value privateKeyPath)
    PROOF=''
    if [[ -z $thing ]]; then
        PROOF_MISSING="no system.thingName in $GG_ROOT/config/config.tlog or effectiveConfig.yaml yet"
        return 1
    fi
    if ! device_identity_file "certificateFilePath" "$cert" "$CLAIM_CERT" ||
        ! device_identity_file "privateKeyPath" "$key" "$CLAIM_KEY"; then
        return 1
    fi
    PROOF=$thing
}

# device_identity_file NAME PATH CLAIM: PATH (system.NAME) is absolute, exists, is not empty and is neither
# the claim file CLAIM nor a copy of it. Sets PROOF_MISSING when not.
device_identity_file() {
    local name=$1 path=$2 claim=$3
    if [[ $path != /* ]]; then
        PROOF_MISSING="system.$name is ${path:-missing}, not an absolute path"
        return 1
    fi
    if [[ ! -s $R$path ]]; then
        PROOF_MISSING="system.$name names $path, which does not exist or is empty"
        return 1
    fi
    if [[ $R$path == "$claim" || $R$path -ef $claim ]] || { [[ -s $claim ]] && cmp -s "$R$path" "$claim"; }; then
        PROOF_MISSING="system.$name names the claim file $path, not a device identity: refusing it"
        return 1
    fi
}

# gg_log_size: the size of greengrass.log in bytes (0 when missing).
gg_log_size() {
    if [[ -f $GG_LOG ]]; then stat -c %s "$GG_LOG"; else echo 0; fi
}

# nucleus_error_lines: the nucleus's [ERROR] lines in greengrass.log written since the offset recorded in
# $GG_LOG_OFFSET_FILE (when the log is smaller, it was rotated: from its start), each followed by up to 5
# lines of its exception (the message and "Caused by:" lines, not the indented "at" frames); at most 40.
# Line format (aws-greengrass-logging-java GreengrassLogMessage.getTextMessage):
#   <timestamp> [ERROR] (<thread>) <logger>: <eventType>. <message>. {<contexts>}
# followed by the cause's stack trace (printStackTrace) on the next lines.
nucleus_error_lines() {
    local offset=0 size line extra=0 count=0
    [[ -f $GG_LOG ]] || return 0
    if [[ -r $GG_LOG_OFFSET_FILE ]]; then offset=$(<"$GG_LOG_OFFSET_FILE"); fi
    [[ $offset =~ ^[0-9]+$ ]] || offset=0
    size=$(gg_log_size)
    if ((size < offset)); then offset=0; fi
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == *' [ERROR] ('* ]]; then
            extra=5
        elif [[ $line == *' ['[A-Z]*'] ('* ]]; then
            extra=0
            continue
        elif ((extra > 0)) && [[ -n ${line//[[:space:]]/} && $line != [[:space:]]* ]]; then
            extra=$((extra - 1))
        else
            continue
        fi
        printf '%s\n' "$line"
        count=$((count + 1))
        ((count < 40)) || break
    done < <(tail -c "+$((offset + 1))" "$GG_LOG")
}

# provisioning_failed_in_log LINES: true when LINES hold the plugin's own error or the nucleus giving up on
# it: FleetProvisioningByClaimPlugin logs at ERROR ("Exception encountered while getting device identity
# information", "Caught exception while reading the CSR file"); KernelLifecycle logs "Caught exception while
# running provisioning plugin. Moving on to run Greengrass without provisioning" when every try failed.
provisioning_failed_in_log() {
    local line
    while IFS= read -r line; do
        case $line in
        *' [ERROR] ('*') com.aws.greengrass.FleetProvisioningByClaimPlugin: '*) return 0 ;;
        *' [ERROR] ('*') com.aws.greengrass.lifecyclemanager.KernelLifecycle: '*'provisioning plugin'*) return 0 ;;
        esac
    done <<<"$1"
    return 1
}

# provision_failed REASON: journal the nucleus's error lines, restart greengrass.service (its next start
# runs the plugin again: the nucleus is still not configured to talk to the cloud), remember where the log
# ends so those lines are not read again, and fail the step (systemd retries with backoff; the next boot
# retries too). The claim material is kept.
provision_failed() {
    local reason=$1 lines line
    lines=$(nucleus_error_lines)
    if [[ -n $lines ]]; then
        while IFS= read -r line; do err "greengrass.log: $line"; done <<<"$lines"
    fi
    gg_log_size >"$GG_LOG_OFFSET_FILE"
    systemctl restart "$GG_UNIT_NAME" || log "WARNING: 'systemctl restart $GG_UNIT_NAME' failed"
    die "$reason; claim material kept, $GG_UNIT_NAME restarted; next try after the backoff or on the next boot"
}

step_provision() {
    local waited=0 lines
    log "waiting up to ${GG_PROVISION_TIMEOUT}s for the nucleus to provision this device (fleet provisioning by claim)"
    while true; do
        if provisioning_proof; then
            log "provisioned as thing '$PROOF' (system.thingName; device certificate and key in place)"
            return 0
        fi
        lines=$(nucleus_error_lines)
        if provisioning_failed_in_log "$lines"; then
            provision_failed "fleet provisioning failed (see the greengrass.log lines above)"
        fi
        if ((waited >= GG_PROVISION_TIMEOUT)); then
            provision_failed "not provisioned after ${waited}s (GG_PROVISION_TIMEOUT): $PROOF_MISSING"
        fi
        sleep "$GG_PROVISION_POLL_SECONDS"
        waited=$((waited + GG_PROVISION_POLL_SECONDS))
    done
}

# ---------------------------------------------------------------- finish

step_finish() {
    # Never without proof: the provision step must have succeeded (its marker), whatever ran before.
    [[ -e $STATE_DIR/provision.done ]] || die "no proof of provisioning ($STATE_DIR/provision.done): claim material kept"
    rm -f "$CLAIM_KEY" "$CLAIM_CERT" "$INIT_CONFIG" "$CONFIG_TEMPLATE" "$GG_LOG_OFFSET_FILE"
    rm -rf "$WORK_DIR" "$PRESEED_DIR"
    : >"$DONE_MARKER"
    log "provisioned: claim key, certificate and configs deleted; $DONE_MARKER written"
    systemctl disable "$UNIT_NAME" ||
        log "WARNING: 'systemctl disable $UNIT_NAME' failed; $DONE_MARKER still keeps it from running again"
}
