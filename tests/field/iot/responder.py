#!/usr/bin/python3
"""Field test stand-in for the AWS IoT fleet-provisioning MQTT API (host side, 127.0.0.1 only).

It is a client of the test's mosquitto broker (TLS, client certificate signed by the test CA) and
answers the two request topics of the fleet-provisioning-by-claim flow the way AWS IoT Core does,
as documented in the AWS IoT developer guide, "Device provisioning MQTT API"
(https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html):

  $aws/certificates/create/json                      (CreateKeysAndCertificate, payload {})
    -> .../accepted  {certificateId, certificatePem, privateKey, certificateOwnershipToken}
    -> .../rejected  {statusCode, errorCode, errorMessage}
  $aws/provisioning-templates/NAME/provision/json    (RegisterThing:
                                                      {certificateOwnershipToken, parameters})
    -> .../accepted  {deviceConfiguration, thingName}
    -> .../rejected  {statusCode, errorCode, errorMessage}

Modelled after what the client of the FleetProvisioningByClaim plugin (aws-greengrass/
aws-greengrass-fleet-provisioning-by-claim, IotIdentityHelper.java) subscribes to and expects: it
subscribes to accepted and rejected before publishing, and turns a rejected payload into an
exception carrying errorMessage. Certificates are issued by the test CA (openssl), as AWS IoT
issues them from its own CA; the ownership token is opaque and single-use.

On an accepted RegisterThing it does what the template does in the account (the moto server of the
cloud tests, boto3 against AWS_ENDPOINT_URL): registers the new certificate, creates the thing
named after the SerialNumber parameter, attaches the certificate and adds the thing to the thing
group. Like a pre-provisioning hook that denies (docs: "Pre-provisioning hooks"), serials listed
in --reject are refused with 403 AccessDenied.

Every request and answer is logged to stdout (the private key never is).
"""

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid

import boto3
import paho.mqtt.client as mqtt

CREATE = "$aws/certificates/create/json"
PROVISION_PREFIX = "$aws/provisioning-templates/"
PROVISION_SUFFIX = "/provision/json"


def log(*parts):
    print("responder:", *parts, flush=True)


class Responder:
    """The state of the emulated account: issued certificates and their ownership tokens."""

    def __init__(self, args):
        self.args = args
        self.tokens = {}  # certificateOwnershipToken -> (certificateId, certificatePem)
        self.lock = threading.Lock()
        self.iot = boto3.client("iot", region_name=args.region, endpoint_url=args.aws_endpoint)

    def issue_certificate(self):
        """A new EC key and a certificate for it signed by the test CA (openssl)."""
        with tempfile.TemporaryDirectory() as tmp:
            key, csr, crt = (os.path.join(tmp, n) for n in ("k.pem", "r.csr", "c.pem"))
            subprocess.run(
                ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", "/CN=AWS IoT Certificate", "-keyout", key, "-out", csr],
                check=True, capture_output=True)
            subprocess.run(
                ["openssl", "x509", "-req", "-in", csr, "-CA", self.args.ca_cert, "-CAkey", self.args.ca_key,
                 "-CAcreateserial", "-days", "365", "-sha256", "-out", crt],
                check=True, capture_output=True)
            with open(key, encoding="ascii") as f:
                private_key = f.read()
            with open(crt, encoding="ascii") as f:
                certificate = f.read()
        fingerprint = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=certificate,
                                     text=True, check=True, capture_output=True).stdout
        certificate_id = fingerprint.split("=", 1)[1].strip().replace(":", "").lower()
        return certificate_id, certificate, private_key

    def create_keys_and_certificate(self, _payload):
        certificate_id, certificate, private_key = self.issue_certificate()
        token = uuid.uuid4().hex + uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = (certificate_id, certificate)
        log(f"CreateKeysAndCertificate: issued certificate {certificate_id}")
        return True, {
            "certificateId": certificate_id,
            "certificatePem": certificate,
            "privateKey": private_key,
            "certificateOwnershipToken": token,
        }

    def register_thing(self, template, payload):
        if template != self.args.template:
            return False, rejected(404, "ResourceNotFoundException",
                                   f"The provisioning template {template} does not exist")
        token = payload.get("certificateOwnershipToken")
        with self.lock:
            issued = self.tokens.pop(token, None) if isinstance(token, str) else None
        if issued is None:
            return False, rejected(400, "InvalidCertificateOwnershipToken",
                                   "The certificate ownership token is invalid or was already used")
        parameters = payload.get("parameters") or {}
        serial = parameters.get("SerialNumber")
        log(f"RegisterThing {template}: parameters {json.dumps(parameters, sort_keys=True)}")
        if not isinstance(serial, str) or not serial:
            return False, rejected(400, "InvalidParameters", "The template parameter SerialNumber is missing")
        if serial in self.args.reject:
            return False, rejected(403, "AccessDenied",
                                   f"Pre-provisioning hook denied provisioning of serial number {serial}")
        certificate_id, certificate = issued
        thing = parameters.get("ThingName") or serial
        arn = self.iot.register_certificate_without_ca(certificatePem=certificate, status="ACTIVE")["certificateArn"]
        self.iot.create_thing(thingName=thing, attributePayload={"attributes": {"SerialNumber": serial}})
        self.iot.attach_thing_principal(thingName=thing, principal=arn)
        self.iot.add_thing_to_thing_group(thingGroupName=self.args.thing_group, thingName=thing)
        log(f"RegisterThing: thing {thing} created, certificate {certificate_id} attached,"
            f" added to thing group {self.args.thing_group}")
        return True, {"deviceConfiguration": {}, "thingName": thing}


def rejected(status, code, message):
    log(f"rejected: {status} {code}: {message}")
    return {"statusCode": status, "errorCode": code, "errorMessage": message}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--thing-group", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--aws-endpoint", required=True)
    p.add_argument("--reject", action="append", default=[], help="serial numbers the template refuses")
    args = p.parse_args()
    responder = Responder(args)

    client = mqtt.Client(client_id="field-iot-responder", clean_session=True)
    client.tls_set(ca_certs=args.ca_cert, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_connect(c, _userdata, _flags, rc):
        log(f"connected to the broker (rc {rc})")
        c.subscribe([(CREATE, 1), (PROVISION_PREFIX + "+" + PROVISION_SUFFIX, 1)])

    def on_message(c, _userdata, msg):
        topic = msg.topic
        try:
            payload = json.loads(msg.payload.decode("utf-8") or "{}")
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            ok, answer = False, rejected(400, "InvalidPayload", f"The payload is not a JSON object: {e}")
        else:
            try:
                if topic == CREATE:
                    ok, answer = responder.create_keys_and_certificate(payload)
                elif topic.startswith(PROVISION_PREFIX) and topic.endswith(PROVISION_SUFFIX):
                    template = topic[len(PROVISION_PREFIX):-len(PROVISION_SUFFIX)]
                    ok, answer = responder.register_thing(template, payload)
                else:
                    return
            except Exception as e:  # an account error is an InternalFailure to the device, as on AWS
                log(f"internal error: {e!r}")
                ok, answer = False, rejected(500, "InternalFailure", "An internal error occurred")
        c.publish(topic + ("/accepted" if ok else "/rejected"), json.dumps(answer), qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", args.broker_port, keepalive=30)
    client.loop_forever(retry_first_connection=True)


if __name__ == "__main__":
    sys.exit(main())
