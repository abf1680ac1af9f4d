"""AWS IoT fleet-provisioning pre-provisioning hook: only serials on the fleet's allowlist register.

`imgbuild cloud fleet init --allowlist-hook` deploys this file as a Lambda function (Python
runtime; only the standard library and boto3, which the Lambda runtime provides) and sets it as
the provisioning template's `preProvisioningHook`.

Event and answer, from the AWS IoT Core Developer Guide, "Pre-provisioning hooks"
(https://docs.aws.amazon.com/iot/latest/developerguide/pre-provisioning-hook.html):
  - AWS IoT calls the function on every RegisterThing request with
      {"claimCertificateId": "...", "certificateId": "...", "certificatePem": "...",
       "templateArn": "arn:aws:iot:REGION:ACCOUNT:provisioningtemplate/NAME",
       "clientId": "...", "parameters": {"NAME": "VALUE", ...}}
    where `parameters` are the template parameters the device sent in RegisterThing (the
    Greengrass fleet-provisioning plugin sends its `templateParameters`; imgbuild's first boot
    sets `SerialNumber` to the device's serial number).
  - The function answers {"allowProvisioning": true|false, "parameterOverrides": {...}}; the
    provisioning proceeds only with "allowProvisioning": true. If the function fails or does
    not return allowProvisioning, the request fails (ACCESS_DENIED), so every doubt here is a
    refusal: a missing or unreadable allowlist object, a malformed allowlist, a missing or
    malformed SerialNumber.

The allowlist is the object `ALLOWLIST_KEY` (default `provisioning/allowlist.txt`, where
`imgbuild cloud provisioning publish --allowlist` puts it) in bucket `ALLOWLIST_BUCKET`, in the
format imgbuild's allowlist reader (imgbuild/cloud/src/allowlist.rs) accepts: one serial a line,
`#` starts a comment, blank lines ignored, surrounding whitespace trimmed; a serial is 1-128
characters of A-Z a-z 0-9 - _ : and is compared exactly; a bad character or a duplicate makes
the whole list invalid. The object is read on every call, so an upload takes effect at once.
"""

import json
import os
import re

import boto3
from botocore.exceptions import BotoCoreError, ClientError

DEFAULT_KEY = "provisioning/allowlist.txt"
MAX_SERIAL_LEN = 128
SERIAL = re.compile(r"[A-Za-z0-9_:-]+")
# Rust's str::trim (allowlist.rs) trims the Unicode White_Space characters; Python's str.strip()
# without arguments trims a slightly different set, so the set is spelled out.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_s3 = None


class InvalidAllowlist(ValueError):
    """The allowlist object is not a valid allowlist (the message names the lines)."""


def parse_allowlist(text):
    """The serials of an allowlist text, as imgbuild's allowlist.rs reads it; raises
    InvalidAllowlist naming every bad line."""
    serials = {}
    problems = []
    # str.lines() in Rust: split at \n, drop one trailing \r.
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        content = raw.split("#", 1)[0].strip(WHITE_SPACE)
        if not content:
            continue
        if not SERIAL.fullmatch(content):
            problems.append(f"line {number}: bad character in {content!r}")
        elif len(content) > MAX_SERIAL_LEN:
            problems.append(f"line {number}: serial longer than {MAX_SERIAL_LEN} characters")
        elif content in serials:
            problems.append(f"line {number}: duplicate serial {content!r} (first on line {serials[content]})")
        else:
            serials[content] = number
    if problems:
        raise InvalidAllowlist("; ".join(problems))
    return set(serials)


def s3_client():
    """One S3 client per Lambda execution environment (reused across invocations)."""
    global _s3
    if _s3 is None:
        _s3 = boto3.client("s3")
    return _s3


def decide(event, s3, bucket, key):
    """(allow, reason) for a pre-provisioning hook event."""
    parameters = event.get("parameters") if isinstance(event, dict) else None
    serial = parameters.get("SerialNumber") if isinstance(parameters, dict) else None
    if not isinstance(serial, str) or not serial:
        return False, "no SerialNumber parameter"
    if not SERIAL.fullmatch(serial) or len(serial) > MAX_SERIAL_LEN:
        return False, "SerialNumber is not a valid serial"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        return False, f"allowlist s3://{bucket}/{key} unreadable ({code})"
    except BotoCoreError as err:
        return False, f"allowlist s3://{bucket}/{key} unreadable ({type(err).__name__})"
    try:
        allowed = parse_allowlist(body.decode("utf-8"))
    except UnicodeDecodeError:
        return False, f"allowlist s3://{bucket}/{key} is not UTF-8 text"
    except InvalidAllowlist as err:
        return False, f"allowlist s3://{bucket}/{key} is invalid: {err}"
    if serial in allowed:
        return True, "on the allowlist"
    return False, "not on the allowlist"


def handler(event, context):
    """The Lambda entry point: allows the registration only for a serial on the allowlist."""
    bucket = os.environ.get("ALLOWLIST_BUCKET", "")
    key = os.environ.get("ALLOWLIST_KEY", DEFAULT_KEY)
    if not bucket:
        allow, reason = False, "ALLOWLIST_BUCKET is not set"
    else:
        allow, reason = decide(event, s3_client(), bucket, key)
    serial = None
    if isinstance(event, dict) and isinstance(event.get("parameters"), dict):
        serial = event["parameters"].get("SerialNumber")
    # One log line per decision (CloudWatch Logs); the certificate PEM is not logged.
    print(json.dumps({"serialNumber": serial, "allowProvisioning": allow, "reason": reason}))
    return {"allowProvisioning": allow}
