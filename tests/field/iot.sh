# shellcheck shell=bash
# The field test's AWS IoT stand-in on the host, 127.0.0.1 only (sourced by tests/field/run.sh):
#   - a test CA (openssl) that signs the broker's server certificate, the claim certificate, the
#     responder's client certificate and (through the responder) every device certificate;
#   - mosquitto (Debian) with TLS on an ephemeral port, `require_certificate true` (a client
#     without a certificate signed by the test CA cannot connect), anonymous topics;
#   - the moto server of the cloud tests (tests/cloud/moto.sh), the "account";
#   - iot/responder.py, the fleet-provisioning MQTT API, registering things in moto.
# Needs: W (scratch directory), REPO, HERE. Debian's boto3 1.26 ignores AWS_ENDPOINT_URL: every
# client here names the endpoint itself.

IOT_REGION=eu-west-1
IOT_ENDPOINT=abcdef1234567-ats.iot.eu-west-1.amazonaws.com
IOT_TEMPLATE=FieldTestProvisioningTemplate
IOT_THING_GROUP=field-test-group
# The address the guest's /etc/hosts gives IOT_ENDPOINT; QEMU forwards it (guestfwd) to the broker.
# shellcheck disable=SC2034 # used by run.sh
IOT_GUEST_ADDR=10.0.2.100
MOSQUITTO_PID=
RESPONDER_PID=
MOTO_PID=

# iot_ca: the test CA, the broker's server certificate (SAN = the data endpoint and 127.0.0.1),
# the claim certificate/key (what `imgbuild cloud claim fetch` would give) and the responder's.
iot_ca() {
    local d=$W/iot
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=imgbuild field test CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    iot_sign server "/CN=$IOT_ENDPOINT" "subjectAltName=DNS:$IOT_ENDPOINT,IP:127.0.0.1"
    iot_sign claim "/CN=field-test-claim" "extendedKeyUsage=clientAuth"
    iot_sign responder "/CN=field-iot-responder" "extendedKeyUsage=clientAuth"
    # the claim material in the names the imgbuild config uses
    cp "$d/claim.pem" "$W/claim.pem.crt"
    cp "$d/claim.key" "$W/claim.private.pem.key"
    chmod 0600 "$W/claim.private.pem.key"
    cp "$d/ca.pem" "$W/field-ca.pem"
}

# iot_sign NAME SUBJECT EXTENSION: an EC key and a certificate signed by the test CA.
iot_sign() {
    local d=$W/iot
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
        -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 30 -sha256 \
        -extfile <(echo "$3") -out "$d/$1.pem" 2>/dev/null
}

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# iot_broker_start: mosquitto with TLS and required client certificates on 127.0.0.1:BROKER_PORT
# (chosen once; a restart reuses it, as QEMU's guestfwd points at it).
iot_broker_start() {
    local d=$W/iot
    BROKER_PORT=${BROKER_PORT:-$(free_port)}
    cat >"$d/mosquitto.conf" <<EOF
# field test broker (tests/field/iot.sh): TLS only, client certificates signed by the test CA
per_listener_settings false
allow_anonymous true
persistence false
# run as the invoking user (as root mosquitto would switch to user "mosquitto", which cannot read the keys)
user $(id -un)
# a file, not stdout: mosquitto does not flush stdout per line, and the test reads the log while it runs
log_dest file $d/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
listener $BROKER_PORT 127.0.0.1
cafile $d/ca.pem
certfile $d/server.pem
keyfile $d/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
EOF
    /usr/sbin/mosquitto -c "$d/mosquitto.conf" >>"$d/mosquitto.stdout" 2>&1 &
    MOSQUITTO_PID=$!
    local _
    for _ in $(seq 50); do
        if (echo >"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "mosquitto did not start: $(tail -5 "$d/mosquitto.log")"
    return 1
}

iot_broker_stop() {
    if [[ -n $MOSQUITTO_PID ]]; then
        kill "$MOSQUITTO_PID" 2>/dev/null || true
        wait "$MOSQUITTO_PID" 2>/dev/null || true
    fi
    MOSQUITTO_PID=
}

# iot_moto_start: the moto server (with the cloud tests' shim) on an ephemeral port; the thing group.
iot_moto_start() {
    local d=$W/iot line _
    mkdir -p "$d"
    MOTO_VENV=${MOTO_VENV:-$REPO/target-cloud-venv} "$REPO/tests/cloud/moto.sh" setup >/dev/null 2>"$d/moto-setup.log" || {
        cat "$d/moto-setup.log"
        return 1
    }
    MOTO_VENV=${MOTO_VENV:-$REPO/target-cloud-venv} "$REPO/tests/cloud/moto.sh" start >"$d/moto.log" 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 150); do
        line=$(grep -m1 'moto-shim listening on ' "$d/moto.log" 2>/dev/null || true)
        [[ -n $line ]] && break
        sleep 0.2
    done
    [[ -n $line ]] || { echo "moto did not start: $(tail -5 "$d/moto.log")"; return 1; }
    export AWS_ENDPOINT_URL=${line##* } AWS_REGION=$IOT_REGION AWS_DEFAULT_REGION=$IOT_REGION
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
    /usr/bin/python3 -c 'import boto3, os, sys
boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_thing_group(thingGroupName=sys.argv[1])' \
        "$IOT_THING_GROUP"
}

# iot_responder_start [SERIAL-TO-REJECT...]: the fleet-provisioning API (iot/responder.py).
iot_responder_start() {
    local d=$W/iot s _
    local -a reject=()
    for s in "$@"; do reject+=(--reject "$s"); done
    /usr/bin/python3 "$HERE/iot/responder.py" --broker-port "$BROKER_PORT" --ca-cert "$d/ca.pem" \
        --ca-key "$d/ca.key" --cert "$d/responder.pem" --key "$d/responder.key" --template "$IOT_TEMPLATE" \
        --thing-group "$IOT_THING_GROUP" --region "$IOT_REGION" --aws-endpoint "$AWS_ENDPOINT_URL" \
        "${reject[@]}" >>"$d/responder.log" 2>&1 &
    RESPONDER_PID=$!
    for _ in $(seq 50); do
        grep -q 'connected to the broker' "$d/responder.log" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "the responder did not connect: $(tail -5 "$d/responder.log")"
    return 1
}

iot_stop_all() {
    local pid
    iot_broker_stop
    for pid in "$RESPONDER_PID" "$MOTO_PID"; do
        if [[ -n $pid ]]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    RESPONDER_PID=
    MOTO_PID=
}

# iot_thing_in_group THING: the thing exists in moto and is in the thing group.
iot_thing_in_group() {
    /usr/bin/python3 - "$1" "$IOT_THING_GROUP" <<'PY'
import os, sys, boto3
iot = boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
thing, group = sys.argv[1], sys.argv[2]
iot.describe_thing(thingName=thing)
names = iot.list_things_in_thing_group(thingGroupName=group)["things"]
sys.exit(0 if thing in names else 1)
PY
}

# iot_thing_exists THING
iot_thing_exists() {
    /usr/bin/python3 -c 'import os, sys, boto3
try:
    boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).describe_thing(thingName=sys.argv[1])
except Exception:
    sys.exit(1)' "$1"
}

# iot_thing_cert_pem THING: the PEM of the certificate attached to THING in moto.
iot_thing_cert_pem() {
    /usr/bin/python3 - "$1" <<'PY'
import os, sys, boto3
iot = boto3.client("iot", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
for arn in iot.list_thing_principals(thingName=sys.argv[1])["principals"]:
    cid = arn.rsplit("/", 1)[1]
    print(iot.describe_certificate(certificateId=cid)["certificateDescription"]["certificatePem"].strip())
PY
}
