# shellcheck shell=bash
# Shared helpers for imgbuild-firstboot: paths, logging, settings, retries, step runner.
# Sourced by imgbuild-firstboot after lib/contract.sh (the CONTRACT_* values shared with the build);
# not executable on its own. The constants and settings defined here are used by steps.sh and
# imgbuild-firstboot:
# shellcheck disable=SC2034

# Every path derives from IMGBUILD_ROOT (empty on the device) so tests can run against a scratch root.
R=${IMGBUILD_ROOT:-}
ENV_FILE=$R$CONTRACT_ENV_FILE
CONFIG_TEMPLATE=$R$CONTRACT_CONFIG_TEMPLATE
STATE_DIR=$R$CONTRACT_STATE_DIR
WORK_DIR=$R$CONTRACT_WORK_DIR
PRESEED_DIR=$R$CONTRACT_PRESEED_DIR
PRESEED_DEBS_DIR=$R$CONTRACT_PRESEED_DEBS_DIR
DONE_MARKER=$R$CONTRACT_DONE_MARKER
SERIAL_FILE=$R$CONTRACT_SERIAL_FILE
RUN_DIR=$R/run/imgbuild-firstboot
SUDOERS_FILE=$R/etc/sudoers.d/imgbuild-greengrass
SERIAL_PLACEHOLDER=$CONTRACT_SERIAL_PLACEHOLDER
UNIT_NAME=$CONTRACT_UNIT_NAME
GG_UNIT_NAME=greengrass.service
GG_USER=ggc_user
GG_GROUP=ggc_group

# The step being run; every log line names it.
CURRENT_STEP=start

# log MESSAGE: an informational line on stderr (the journal under systemd).
log() {
    printf '%s\n' "imgbuild-firstboot[$CURRENT_STEP]: $*" >&2
}

# err MESSAGE: an error line; under systemd (JOURNAL_STREAM set) it gets journal priority "err".
err() {
    local prefix=''
    if [[ -n ${JOURNAL_STREAM:-} ]]; then prefix='<3>'; fi
    printf '%s\n' "${prefix}imgbuild-firstboot[$CURRENT_STEP]: ERROR: $*" >&2
}

# die MESSAGE: log an error and exit 1 (inside a step this fails the step).
die() {
    err "$*"
    exit 1
}

# have COMMAND: true when COMMAND is on PATH.
have() {
    command -v "$1" >/dev/null 2>&1
}

# make_dir MODE DIR: create DIR and its parents; DIR gets MODE.
make_dir() {
    mkdir -p "$2"
    chmod "$1" "$2"
}

# retry ATTEMPTS DELAY COMMAND...: run COMMAND up to ATTEMPTS times, sleeping DELAY seconds between tries.
retry() {
    local attempts=$1 delay=$2 try=1
    shift 2
    until "$@"; do
        if ((try >= attempts)); then
            err "'$*' failed $try time(s), giving up"
            return 1
        fi
        log "'$*' failed (attempt $try of $attempts), retrying in ${delay}s"
        sleep "$delay"
        try=$((try + 1))
    done
}

# require_setting NAME PATTERN: fail unless the setting NAME is set and matches the extended regex PATTERN.
require_setting() {
    local name=$1 pattern=$2 value=${!1:-}
    [[ -n $value ]] || die "$name is missing from $ENV_FILE: rebuild the image with a complete [greengrass] section"
    [[ $value =~ ^($pattern)$ ]] || die "$name='$value' in $ENV_FILE is not valid (expected $pattern): rebuild the image"
}

# load_settings: source the build-time settings file, apply defaults and validate them.
load_settings() {
    [[ -r $ENV_FILE ]] || die "settings file $ENV_FILE is missing: the image was not built with a [greengrass] section"
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    require_setting NUCLEUS_VERSION '[0-9]+(\.[0-9]+)*'
    require_setting NUCLEUS_SHA256 '[0-9a-f]{64}'
    require_setting PLUGIN_VERSION '[0-9]+(\.[0-9]+)*'
    require_setting PLUGIN_SHA256 '[0-9a-f]{64}'
    require_setting DOCKER_FLAVOR 'debian|docker-ce'
    require_setting JAVA_PACKAGE '[a-z0-9][a-z0-9+.-]+'
    local releases=$CONTRACT_RELEASES_URL
    GG_ROOT=${GG_ROOT:-$CONTRACT_GG_ROOT}
    NUCLEUS_URL=${NUCLEUS_URL:-$releases/greengrass-$NUCLEUS_VERSION.zip}
    PLUGIN_URL=${PLUGIN_URL:-$releases/aws-greengrass-FleetProvisioningByClaim/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar}
    PROXY_URL=${PROXY_URL:-}
    BUILD_EPOCH=${BUILD_EPOCH:-1735689600}
    CLOCK_WAIT_SECONDS=${CLOCK_WAIT_SECONDS:-120}
    APT_RETRIES=${APT_RETRIES:-3}
    RETRY_DELAY_SECONDS=${RETRY_DELAY_SECONDS:-15}
    GG_ACTIVE_TIMEOUT_SECONDS=${GG_ACTIVE_TIMEOUT_SECONDS:-300}
    GG_PROVISION_TIMEOUT=${GG_PROVISION_TIMEOUT:-900}
    GG_PROVISION_POLL_SECONDS=${GG_PROVISION_POLL_SECONDS:-10}
    BACKOFF_BASE_SECONDS=${BACKOFF_BASE_SECONDS:-30}
    BACKOFF_MAX_SECONDS=${BACKOFF_MAX_SECONDS:-900}
    local name
    for name in BUILD_EPOCH CLOCK_WAIT_SECONDS APT_RETRIES RETRY_DELAY_SECONDS GG_ACTIVE_TIMEOUT_SECONDS \
        GG_PROVISION_TIMEOUT BACKOFF_BASE_SECONDS BACKOFF_MAX_SECONDS; do
        require_setting "$name" '[0-9]+'
    done
    require_setting GG_PROVISION_POLL_SECONDS '[1-9][0-9]*'
    require_setting GG_ROOT '/[A-Za-z0-9_./-]+'
    ROOT_CA_PATH=${ROOT_CA_PATH:-$GG_ROOT/$CONTRACT_ROOT_CA_NAME}
    require_setting ROOT_CA_PATH '/[A-Za-z0-9_./-]+'
    CLAIM_CERT=$R$GG_ROOT/$CONTRACT_CLAIM_CERT_NAME
    CLAIM_KEY=$R$GG_ROOT/$CONTRACT_CLAIM_KEY_NAME
    ROOT_CA=$R$ROOT_CA_PATH
    # What the nucleus writes (aws-greengrass-nucleus: Kernel.DEFAULT_CONFIG_YAML_FILE_WRITE,
    # Kernel.DEFAULT_CONFIG_TLOG_FILE under NucleusPaths.configPath(); logs under logs/).
    EFFECTIVE_CONFIG=$R$GG_ROOT/config/effectiveConfig.yaml
    CONFIG_TLOG=$R$GG_ROOT/config/config.tlog
    GG_LOG=$R$GG_ROOT/logs/greengrass.log
    GG_LOG_OFFSET_FILE=$STATE_DIR/greengrass-log.offset
    PRESEED_NUCLEUS=$PRESEED_DIR/${CONTRACT_PRESEED_NUCLEUS_NAME/"$CONTRACT_VERSION_PLACEHOLDER"/$NUCLEUS_VERSION}
    PRESEED_PLUGIN=$PRESEED_DIR/${CONTRACT_PRESEED_PLUGIN_NAME/"$CONTRACT_VERSION_PLACEHOLDER"/$PLUGIN_VERSION}
    NUCLEUS_ZIP=$WORK_DIR/greengrass-$NUCLEUS_VERSION.zip
    PLUGIN_JAR=$WORK_DIR/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar
    INSTALLER_DIR=$WORK_DIR/GreengrassInstaller
    INIT_CONFIG=$WORK_DIR/config.yaml
}

# backoff: before the Nth start in this boot (N >= 2) sleep BASE * 2^(N-2) seconds, capped at MAX.
# The counter lives in /run (tmpfs), so each boot's first attempt starts at once.
backoff() {
    local counter=$RUN_DIR/attempts previous=0 attempt delay
    mkdir -p "$RUN_DIR"
    if [[ -r $counter ]]; then previous=$(<"$counter"); fi
    [[ $previous =~ ^[0-9]+$ ]] || previous=0
    attempt=$((previous + 1))
    printf '%s\n' "$attempt" >"$counter"
    delay=$BACKOFF_BASE_SECONDS
    while ((attempt > 2 && delay < BACKOFF_MAX_SECONDS)); do
        delay=$((delay * 2))
        attempt=$((attempt - 1))
    done
    if ((delay > BACKOFF_MAX_SECONDS)); then delay=$BACKOFF_MAX_SECONDS; fi
    if ((previous == 0 || delay == 0)); then return 0; fi
    log "attempt $((previous + 1)) in this boot: backing off ${delay}s"
    sleep "$delay"
}

# run_step NAME [always]: run step_NAME in a subshell with errexit, unless NAME.done exists; then
# write NAME.done. With "always" the step has no marker and runs every time.
# On failure: log the step name and exit with the step's status (systemd restarts the unit).
run_step() {
    local name=$1 mode=${2:-marker} rc=0
    CURRENT_STEP=$name
    if [[ $mode == marker && -e $STATE_DIR/$name.done ]]; then
        log "already done, skipping"
        return 0
    fi
    log "starting"
    set +e
    (
        set -e
        "step_$name"
    )
    rc=$?
    set -e
    if ((rc != 0)); then
        err "step '$name' failed (exit $rc); claim material kept; systemd retries $UNIT_NAME with backoff"
        exit "$rc"
    fi
    if [[ $mode == marker ]]; then : >"$STATE_DIR/$name.done"; fi
    log "done"
}
