#!/usr/bin/env bats
# The real first-boot scripts, installed into a scratch root, run against stub system commands.

load helpers

setup() {
    setup_scratch
}

# fail_after_three_tries STEP CALL SECONDS VAR=VALUE...: a run with the given fault fails in STEP
# after making the call matching the whole-line regex CALL three times, with `sleep SECONDS` twice.
fail_after_three_tries() {
    local step=$1 call=$2 seconds=$3
    shift 3
    run_firstboot "$@"
    assert_failed_at "$step"
    [[ $(grep -cx "$call" "$STUB_LOG") -eq 3 ]]
    [[ $(grep -cx "sleep $seconds" "$STUB_LOG") -eq 2 ]]
}

# resumes_at STEP: the next run, without the fault, makes exactly the happy path's calls from
# STEP on and provisions the device.
resumes_at() {
    run_firstboot
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from "$1")"
    assert_provisioned
}

@test "happy path: every step's calls in order, claim material deleted, done marker, unit disabled" {
    run_firstboot
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from serial)"
    assert_provisioned
    for step in serial packages users download config install service; do [[ -e $STATE/$step.done ]]; done
    [[ $(<"$STATE/serial") == "$DT_SERIAL" ]]
    [[ $output == *"serial number '$DT_SERIAL' (from devicetree)"* ]]
    [[ $output == *"jarsigner verified the signature"* ]]
    [[ $(stat -c %a "$STATE") == 700 ]]
}

@test "java gets exactly the installer arguments, and the init config has the serial rendered in" {
    run_firstboot
    [[ $status -eq 0 ]]
    cmp <(expected_java_args) "$STUB_STATE/java.argv"
    diff -u <(sed "s/@SERIAL_NUMBER@/$DT_SERIAL/g" "$FIXTURE/greengrass-config.yaml.in") \
        "$STUB_STATE/java-init-config.yaml"
    ! grep -q '@SERIAL_NUMBER@' "$STUB_STATE/java-init-config.yaml" || false
}

@test "users step writes the sudoers rule Greengrass needs, mode 0440" {
    run_firstboot
    [[ $status -eq 0 ]]
    grep -qx 'root    ALL=(ALL:ALL) ALL' "$R/etc/sudoers.d/imgbuild-greengrass"
    [[ $(stat -c %a "$R/etc/sudoers.d/imgbuild-greengrass") == 440 ]]
    [[ ! -e $R/etc/sudoers.d/imgbuild-greengrass.new ]]
}

@test "a second run after success does nothing" {
    run_firstboot
    [[ $status -eq 0 ]]
    run_firstboot
    [[ $status -eq 0 ]]
    [[ ! -s $STUB_LOG ]]
    [[ $output == *"already provisioned"* ]]
}

@test "failure in serial (no source): clear error, nothing else runs; resumes once a serial exists" {
    rm "$R/sys/firmware/devicetree/base/serial-number"
    run_firstboot
    assert_failed_at serial
    [[ $output == *"no serial number found"*"imgbuild.serial="* ]]
    [[ ! -s $STUB_LOG ]]
    printf '%s\0' "$DT_SERIAL" >"$R/sys/firmware/devicetree/base/serial-number"
    resumes_at serial
}

@test "failure in packages: apt-get retried APT_RETRIES times, later run resumes at packages" {
    fail_after_three_tries packages 'apt-get .* update' 15 STUB_FAIL=apt-get
    [[ $(grep -c '^apt-get .* install' "$STUB_LOG") -eq 0 ]]
    resumes_at packages
}

@test "failure in users: later run resumes at users" {
    fail_and_resume users STUB_FAIL=useradd
}

@test "failure in download: later run resumes at download" {
    fail_and_resume download STUB_FAIL=curl
    [[ ! -e $R$CONTRACT_PRESEED_DIR ]]
}

@test "failure in config (template without placeholder): later run resumes at config" {
    sed -i 's/@SERIAL_NUMBER@/FIXED/' "$R$CONTRACT_CONFIG_TEMPLATE"
    cp "$R$CONTRACT_CONFIG_TEMPLATE" "$FIXTURE/"
    run_firstboot
    assert_failed_at config
    [[ $output == *"has no @SERIAL_NUMBER@ placeholder"* ]]
    sed -i 's/"FIXED"/"@SERIAL_NUMBER@"/' "$R$CONTRACT_CONFIG_TEMPLATE"
    resumes_at config
}

@test "failure in install (installer exits 1): later run resumes at install" {
    fail_and_resume install STUB_FAIL=java
}

@test "failure in service (greengrass.service never active): bounded wait, later run resumes at service" {
    set_setting GG_ACTIVE_TIMEOUT_SECONDS 10
    fail_after_three_tries service 'systemctl is-active --quiet greengrass.service' 5 \
        STUB_FAIL='systemctl is-active' STUB_NUCLEUS=never
    [[ $output == *"greengrass.service is not active after 10s"* ]]
    resumes_at service
}

@test "provision: the installer's exit is not proof; first boot polls until the nucleus records the thing" {
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $output == *"waiting up to 900s for the nucleus to provision"* ]]
    [[ $output == *"provisioned as thing 'device-thing'"* ]]
    # Nothing was deleted before the proof appeared: the poll (sleep) comes before the deletion.
    diff -u <(printf '%s\n' 'systemctl is-active --quiet greengrass.service' 'sleep 10' \
        'systemctl disable imgbuild-firstboot.service') <(tail -n 3 "$STUB_LOG")
    [[ -e $STATE/provision.done && ! -e $STATE/greengrass-log.offset ]]
}

@test "provision: proof found in effectiveConfig.yaml alone (written by the nucleus on restart)" {
    run_firstboot STUB_NUCLEUS=yaml STUB_THING='thing-"quoted"-42'
    [[ $status -eq 0 ]]
    [[ $output == *"provisioned as thing 'thing-\"quoted\"-42'"* ]]
    assert_provisioned
}

@test "provision: no proof within GG_PROVISION_TIMEOUT: claim kept, greengrass restarted, step fails" {
    set_setting GG_PROVISION_TIMEOUT 30
    run_firstboot STUB_NUCLEUS=never
    assert_failed_at provision
    [[ $(grep -cx 'sleep 10' "$STUB_LOG") -eq 3 ]]
    [[ $output == *"not provisioned after 30s (GG_PROVISION_TIMEOUT): no system.thingName"* ]]
    grep -qx 'systemctl restart greengrass.service' "$STUB_LOG"
    [[ -e $STATE/install.done && -e $STATE/service.done && ! -e $STATE/provision.done ]]
    # Only ERROR lines go to the journal; the plugin's INFO retries do not.
    [[ $output != *"greengrass.log:"* ]]
}

@test "provision: the plugin's error lines fail the wait at once and go to the journal as errors" {
    run_firstboot STUB_NUCLEUS=error JOURNAL_STREAM=8:1
    assert_failed_at provision
    [[ $(grep -cx 'sleep 10' "$STUB_LOG") -eq 1 ]]
    grep -qx 'systemctl restart greengrass.service' "$STUB_LOG"
    grep -q '^<3>imgbuild-firstboot\[provision\]: ERROR: greengrass.log: .* \[ERROR\] (pool-2-thread-1) com.aws.greengrass.FleetProvisioningByClaimPlugin: Exception encountered while getting device identity information' <<<"$output"
    grep -q '^<3>imgbuild-firstboot\[provision\]: ERROR: greengrass.log: Caused by: RegisterThing rejected: InvalidRequestException: SerialNumber not on the allowlist$' <<<"$output"
    grep -q '^<3>imgbuild-firstboot\[provision\]: ERROR: greengrass.log: .*KernelLifecycle: Caught exception while running provisioning plugin' <<<"$output"
    # Stack frames stay out of the journal.
    ! grep -q 'FutureExceptionHandler.java' <<<"$output" || false
    [[ $output == *"fleet provisioning failed"* ]]
    # The log offset is remembered: the same lines do not fail the next try.
    [[ $(<"$STATE/greengrass-log.offset") -eq $(stat -c %s "$GG/logs/greengrass.log") ]]
    run_firstboot STUB_NUCLEUS=provision
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from provision)"
    assert_provisioned
}

@test "provision: system.* naming the claim certificate and key is refused (no deletion)" {
    set_setting GG_PROVISION_TIMEOUT 10
    run_firstboot STUB_NUCLEUS=claim
    assert_failed_at provision
    [[ $output == *"system.certificateFilePath names the claim file /greengrass/v2/claim.pem.crt"*"refusing it"* ]]
}

@test "provision: a copy of the claim certificate as device certificate is refused" {
    set_setting GG_PROVISION_TIMEOUT 10
    run_firstboot STUB_NUCLEUS=missing
    assert_failed_at provision
    [[ $output == *"system.certificateFilePath names /greengrass/v2/thingCert.crt, which does not exist or is empty"* ]]
    cp "$GG/claim.pem.crt" "$GG/thingCert.crt"
    echo key >"$GG/privKey.key"
    run_firstboot STUB_NUCLEUS=missing
    assert_failed_at provision
    [[ $output == *"names the claim file /greengrass/v2/thingCert.crt"* ]]
}

@test "provision: a timeout in one boot, the next boot (service already set up) provisions" {
    set_setting GG_PROVISION_TIMEOUT 20
    run_firstboot STUB_NUCLEUS=never
    assert_failed_at provision
    rm -r "$R/run/imgbuild-firstboot"
    run_firstboot STUB_NUCLEUS=provision
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from provision)"
    assert_provisioned
    ! grep -q '^java' "$STUB_LOG" || false
}

@test "a failing 'systemctl disable' is only a warning: the done marker keeps the unit from running" {
    run_firstboot STUB_FAIL='systemctl disable'
    [[ $status -eq 0 ]]
    [[ $output == *"WARNING: 'systemctl disable imgbuild-firstboot.service' failed"* ]]
    [[ -e $STATE/done ]]
}

@test "kernel command line imgbuild.serial= wins over the device tree" {
    echo 'console=ttyAMA0 imgbuild.serial=CMD-0042 rw' >"$R/proc/cmdline"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $(<"$STATE/serial") == CMD-0042 ]]
    grep -qx '        SerialNumber: "CMD-0042"' "$STUB_STATE/java-init-config.yaml"
}

@test "device-tree serial: the trailing NUL is stripped" {
    run_firstboot
    [[ $status -eq 0 ]]
    cmp <(printf '%s\n' "$DT_SERIAL") "$STATE/serial"
    [[ $(tr -cd '\0' <"$STUB_STATE/java-init-config.yaml" | wc -c) -eq 0 ]]
    grep -qx "        SerialNumber: \"$DT_SERIAL\"" "$STUB_STATE/java-init-config.yaml"
}

@test "without a device tree the /proc/cpuinfo Serial is used" {
    rm "$R/sys/firmware/devicetree/base/serial-number"
    printf 'processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4\n' \
        >"$R/proc/cpuinfo"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $(<"$STATE/serial") == 10000000abcdef01 ]]
}

@test "an all-zero cpuinfo Serial is skipped for DMI; the serial is sanitized to [A-Za-z0-9_-]" {
    rm "$R/sys/firmware/devicetree/base/serial-number"
    printf 'Serial\t\t: 0000000000000000\n' >"$R/proc/cpuinfo"
    mkdir -p "$R/sys/class/dmi/id"
    echo 'VMW-56 4d/ab;cd_ef' >"$R/sys/class/dmi/id/product_serial"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $(<"$STATE/serial") == VMW-564dabcd_ef ]]
    [[ $output == *"(from dmi)"* ]]
}

@test "only placeholder serials (DMI 'To Be Filled By O.E.M.') is a clear failure" {
    rm "$R/sys/firmware/devicetree/base/serial-number"
    mkdir -p "$R/sys/class/dmi/id"
    echo 'To Be Filled By O.E.M.' >"$R/sys/class/dmi/id/product_serial"
    run_firstboot
    assert_failed_at serial
    [[ $output == *"no serial number found"* ]]
}

@test "sha256 mismatch of the downloaded plugin jar: failure, file deleted, installer not run" {
    set_setting PLUGIN_SHA256 "$(printf '0%.0s' {1..64})"
    run_firstboot
    assert_failed_at download
    [[ $output == *"sha256 mismatch for $RELEASES/aws-greengrass-FleetProvisioningByClaim/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar: got $PLUGIN_SHA256"* ]]
    [[ ! -e $WORK/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar && ! -e $WORK/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar.part ]]
    ! grep -q '^java' "$STUB_LOG" || false
}

@test "pre-seeded nucleus, plugin and .debs are used: no curl, no apt-get update, no package sources" {
    local preseed=$R$CONTRACT_PRESEED_DIR
    mkdir -p "$preseed/debs"
    cp "$DOWNLOADS/greengrass-$NUCLEUS_VERSION.zip" "$preseed/greengrass-nucleus-$NUCLEUS_VERSION.zip"
    cp "$DOWNLOADS/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar" "$preseed/"
    rm "$DOWNLOADS"/*
    echo a >"$preseed/debs/docker.io_20.10_arm64.deb"
    echo b >"$preseed/debs/sudo_1.9_arm64.deb"
    run_firstboot
    [[ $status -eq 0 ]]
    ! grep -q '^curl' "$STUB_LOG" || false
    ! grep -q '^apt-get .* update' "$STUB_LOG" || false
    grep -qx "apt-get -o DPkg::Lock::Timeout=300 -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null install -y --no-install-recommends $preseed/debs/docker.io_20.10_arm64.deb $preseed/debs/sudo_1.9_arm64.deb" "$STUB_LOG"
    # shellcheck disable=SC2016 # dpkg-query's format, logged literally
    grep -qx 'dpkg-query -W -f=${Package} ${db:Status-Status}\\n docker.io openjdk-17-jre-headless sudo unzip curl ca-certificates' "$STUB_LOG"
    assert_provisioned
    [[ ! -e $preseed ]]
}

@test "an empty pre-seeded debs directory falls back to the network" {
    mkdir -p "$R$CONTRACT_PRESEED_DIR/debs"
    run_firstboot
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from serial)"
}

@test "a pre-seeded set missing a required package fails in packages, naming it" {
    mkdir -p "$R$CONTRACT_PRESEED_DIR/debs"
    echo a >"$R$CONTRACT_PRESEED_DIR/debs/docker.io_20.10_arm64.deb"
    run_firstboot STUB_NOT_INSTALLED=openjdk-17-jre-headless
    assert_failed_at packages
    [[ $output == *"package 'openjdk-17-jre-headless' is not installed"* ]]
}

@test "a corrupted pre-seeded jar is deleted, so the next run downloads it" {
    local preseed=$R$CONTRACT_PRESEED_DIR
    mkdir -p "$preseed"
    echo corrupted >"$preseed/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"
    run_firstboot
    assert_failed_at download
    [[ $output == *"sha256 mismatch for $preseed/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar"* ]]
    [[ ! -e $preseed/fleetprovisioningbyclaim-$PLUGIN_VERSION.jar ]]
    run_firstboot
    [[ $status -eq 0 ]]
    # The nucleus zip verified in the failed run is not fetched again.
    grep -c '^curl' "$STUB_LOG" | grep -qx 1
    grep -q "^curl .*fleetprovisioningbyclaim-$PLUGIN_VERSION.jar$" "$STUB_LOG"
}

@test "jarsigner not verifying the nucleus zip: failure, zip deleted" {
    run_firstboot STUB_JARSIGNER_OUTPUT='jar is unsigned.'
    assert_failed_at download
    [[ $output == *"jarsigner -verify did not verify"*"jar is unsigned."* ]]
    [[ ! -e $WORK/greengrass-$NUCLEUS_VERSION.zip ]]
}

@test "without jarsigner (JRE only) the signature check is skipped with a journal note" {
    rm "$BIN/jarsigner"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $output == *"jarsigner not found"*"signature check"*"skipped"* ]]
    assert_calls "$(expected_calls_from serial | grep -v '^jarsigner')"
}

@test "docker-ce flavor: Docker's repository is added before installing docker-ce" {
    set_setting DOCKER_FLAVOR docker-ce
    printf '%s\n' 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' 'VERSION_CODENAME=bookworm' >"$R/etc/os-release"
    echo 'stand-in key' >"$DOWNLOADS/gpg"
    run_firstboot
    [[ $status -eq 0 ]]
    local apt='apt-get -o DPkg::Lock::Timeout=300'
    diff -u <(printf '%s\n' 'dpkg --configure -a' "$apt update" \
        "$apt install -y --no-install-recommends ca-certificates curl" \
        "curl $CURL_OPTIONS --output $R/etc/apt/keyrings/docker.asc https://download.docker.com/linux/debian/gpg" \
        'dpkg --print-architecture' "$apt update" \
        "$apt install -y --no-install-recommends docker-ce docker-ce-cli containerd.io openjdk-17-jre-headless sudo unzip curl ca-certificates") \
        <(sed -n '1,/install.*docker-ce/p' "$STUB_LOG")
    [[ $(<"$R/etc/apt/sources.list.d/docker.list") == 'deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable' ]]
    [[ $(stat -c %a "$R/etc/apt/keyrings/docker.asc") == 644 ]]
}

@test "PROXY_URL goes to apt-get and curl" {
    set_setting PROXY_URL http://proxy.example:3128
    run_firstboot
    [[ $status -eq 0 ]]
    grep -qx 'apt-get -o DPkg::Lock::Timeout=300 -o Acquire::http::Proxy=http://proxy.example:3128 -o Acquire::https::Proxy=http://proxy.example:3128 update' "$STUB_LOG"
    [[ $(grep -c '^curl .* --proxy http://proxy.example:3128 --output ' "$STUB_LOG") -eq 2 ]]
}

@test "clock not synchronized and before the build time: bounded wait, then failure before apt" {
    rm "$R/run/systemd/timesync/synchronized"
    set_setting CLOCK_WAIT_SECONDS 10
    set_setting BUILD_EPOCH 4102444800
    run_firstboot
    [[ $status -ne 0 ]]
    [[ $output == *"step 'clock' failed"* && $output == *"before the image was built"* ]]
    assert_calls "$(printf '%s\n' 'sleep 5' 'sleep 5')"
    assert_claim_material_kept
}

@test "clock not synchronized but after the build time: continues after the bounded wait" {
    rm "$R/run/systemd/timesync/synchronized"
    set_setting CLOCK_WAIT_SECONDS 5
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $output == *"NTP not synchronized within 5s"* ]]
    assert_calls "$(printf '%s\n' 'sleep 5'; expected_calls_from serial)"
}

@test "repeated failures in one boot back off 30 s, 60 s, ...; a reboot starts without delay" {
    set_setting BACKOFF_BASE_SECONDS 30
    set_setting BACKOFF_MAX_SECONDS 100
    local first_call
    for first_call in 'dpkg --configure -a' 'sleep 30' 'sleep 60' 'sleep 100' 'sleep 100'; do
        run_firstboot STUB_FAIL=java
        assert_failed_at install
        [[ $(head -n 1 "$STUB_LOG") == "$first_call" ]]
    done
    rm -r "$R/run/imgbuild-firstboot"
    run_firstboot
    [[ $status -eq 0 ]]
    assert_calls "$(expected_calls_from install)"
}

@test "a missing or invalid setting fails before any step, naming the setting" {
    sed -i '/^NUCLEUS_SHA256=/d' "$R$CONTRACT_ENV_FILE"
    run_firstboot
    [[ $status -ne 0 ]]
    [[ $output == *"NUCLEUS_SHA256 is missing from $R$CONTRACT_ENV_FILE"* ]]
    [[ ! -s $STUB_LOG ]]
    set_setting NUCLEUS_SHA256 "$NUCLEUS_SHA256"
    set_setting DOCKER_FLAVOR podman
    run_firstboot
    [[ $status -ne 0 ]]
    [[ $output == *"DOCKER_FLAVOR='podman'"*"not valid"* ]]
}

@test "errors carry the journal priority prefix under systemd (JOURNAL_STREAM set)" {
    run_firstboot STUB_FAIL=java JOURNAL_STREAM=8:12345
    [[ $status -ne 0 ]]
    grep -q "^<3>imgbuild-firstboot\[install\]: ERROR: step 'install' failed" <<<"$output"
}

@test "the systemd unit passes systemd-analyze verify and matches the on-device contract" {
    local unit=$BATS_TEST_TMPDIR/imgbuild-firstboot.service
    sed "s|^ExecStart=/|ExecStart=$R/|" "$FIRSTBOOT_SRC/imgbuild-firstboot.service" >"$unit"
    run systemd-analyze verify "$unit"
    [[ $status -eq 0 && -z $output ]]
    local file=$FIRSTBOOT_SRC/imgbuild-firstboot.service
    grep -qx 'Type=oneshot' "$file"
    grep -qx 'RemainAfterExit=yes' "$file"
    grep -qx 'Restart=on-failure' "$file"
    grep -qxF "ConditionPathExists=!$CONTRACT_DONE_MARKER" "$file"
    grep -qxF "ExecStart=$CONTRACT_FIRSTBOOT_SCRIPT" "$file"
    grep -qx 'WantedBy=multi-user.target' "$file"
    grep -q '^After=.*network-online.target' "$file"
    grep -q '^After=.*time-sync.target' "$file"
    grep -qx 'Wants=network-online.target' "$file"
}

@test "real visudo accepts the sudoers rule as written (mode 0440)" {
    ln -sf "$(command -v visudo)" "$BIN/visudo"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ -e $STATE/users.done ]]
    visudo -cf "$R/etc/sudoers.d/imgbuild-greengrass"
}

@test "real jarsigner: a signed nucleus zip passes, the same zip unsigned is refused" {
    local dir=$BATS_TEST_TMPDIR/jar zip=$DOWNLOADS/greengrass-$NUCLEUS_VERSION.zip
    mkdir -p "$dir/content/lib"
    echo 'stand-in' >"$dir/content/lib/Greengrass.jar"
    jar --create --file "$dir/unsigned.zip" -C "$dir/content" .
    cp "$dir/unsigned.zip" "$dir/signed.zip"
    keytool -genkeypair -keystore "$dir/keys.p12" -storepass changeit -alias test -dname CN=test \
        -keyalg RSA -keysize 2048 -validity 2 2>/dev/null
    jarsigner -keystore "$dir/keys.p12" -storepass changeit "$dir/signed.zip" test >/dev/null 2>&1
    ln -sf "$(command -v jarsigner)" "$BIN/jarsigner"

    cp "$dir/unsigned.zip" "$zip"
    set_setting NUCLEUS_SHA256 "$(sha256sum "$zip" | cut -d' ' -f1)"
    run_firstboot
    assert_failed_at download
    [[ $output == *"jarsigner -verify did not verify"*"jar is unsigned."* ]]

    cp "$dir/signed.zip" "$zip"
    set_setting NUCLEUS_SHA256 "$(sha256sum "$zip" | cut -d' ' -f1)"
    run_firstboot
    [[ $status -eq 0 ]]
    [[ $output == *"jarsigner verified the signature"* ]]
}
