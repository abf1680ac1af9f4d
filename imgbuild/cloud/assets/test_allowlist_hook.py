"""Tests of the pre-provisioning hook (allowlist_hook.py) against a real moto server.

Run with the python of the moto venv (tests/cloud/moto.sh setup prints it):
    "$(tests/cloud/moto.sh setup)/bin/python" -m unittest discover -s imgbuild/cloud/assets -p 'test_*.py'
`cargo test --test fleet` runs it too. The S3 calls go to a private moto server (tests/cloud/
moto_shim.py on 127.0.0.1, started here) through boto3's AWS_ENDPOINT_URL; nothing is mocked.
The events have the shape of the AWS IoT "Pre-provisioning hooks" page (see allowlist_hook.py).
"""

import os
import subprocess
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE.parents[2] / "tests" / "cloud" / "moto_shim.py"
sys.path.insert(0, str(HERE))

import allowlist_hook  # noqa: E402

BUCKET = "fleet-config"
KEY = "provisioning/allowlist.txt"


def event(serial=None, **extra):
    """A pre-provisioning hook event as AWS IoT sends it (values are examples)."""
    parameters = dict(extra)
    if serial is not None:
        parameters["SerialNumber"] = serial
    return {
        "claimCertificateId": "0a1b2c3d4e5f",
        "certificateId": "f5e4d3c2b1a0",
        "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
        "templateArn": "arn:aws:iot:eu-west-1:123456789012:provisioningtemplate/Fleet-Template",
        "clientId": "221a6d10-9c7f-42f1-9153-e52e6fc869c1",
        "parameters": parameters,
    }


class HookAgainstMoto(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen(
            [sys.executable, str(SHIM), "--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = cls.server.stdout.readline().strip()
        prefix = "moto-shim listening on "
        if not line.startswith(prefix):
            cls.server.kill()
            raise RuntimeError(f"moto shim did not start: {line!r}")
        cls.saved = {k: os.environ.get(k) for k in ENV}
        os.environ.update(
            AWS_ENDPOINT_URL=line[len(prefix):],
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="eu-west-1",
            ALLOWLIST_BUCKET=BUCKET,
        )
        os.environ.pop("ALLOWLIST_KEY", None)
        allowlist_hook._s3 = None
        cls.s3 = allowlist_hook.s3_client()
        cls.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

    @classmethod
    def tearDownClass(cls):
        for k, v in cls.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        allowlist_hook._s3 = None
        cls.server.stdin.close()
        cls.server.wait(timeout=30)

    def put(self, body):
        self.s3.put_object(Bucket=BUCKET, Key=KEY, Body=body)

    def answer(self, ev):
        out = allowlist_hook.handler(ev, None)
        self.assertEqual(set(out), {"allowProvisioning"}, out)
        self.assertIsInstance(out["allowProvisioning"], bool)
        return out["allowProvisioning"]

    def test_a_listed_serial_is_allowed(self):
        self.put(b"# fleet A\n10000000abcdef01  # rack 3\r\nSN-2\n\n")
        self.assertTrue(self.answer(event("10000000abcdef01", ThingName="10000000abcdef01")))
        self.assertTrue(self.answer(event("SN-2")))

    def test_an_unlisted_serial_is_denied(self):
        self.put(b"SN-1\nSN-2\n")
        self.assertFalse(self.answer(event("SN-3")))
        self.assertFalse(self.answer(event("sn-1")), "serials are case-sensitive")
        self.assertFalse(self.answer(event("SN")), "no prefix match")

    def test_a_missing_allowlist_object_denies(self):
        self.s3.delete_object(Bucket=BUCKET, Key=KEY)
        allow, reason = allowlist_hook.decide(event("SN-1"), self.s3, BUCKET, KEY)
        self.assertFalse(allow)
        self.assertIn("NoSuchKey", reason)
        self.assertFalse(self.answer(event("SN-1")))

    def test_a_missing_bucket_denies(self):
        allow, reason = allowlist_hook.decide(event("SN-1"), self.s3, "no-such-bucket", KEY)
        self.assertFalse(allow)
        self.assertIn("NoSuchBucket", reason)

    def test_a_malformed_allowlist_denies_everyone(self):
        for body in [b"SN-1\nSN 2\n", b"SN-1\nSN-1\n", b"SN-1\n" + b"a" * 129 + b"\n", b"SN-1\n\xff\xfe\n"]:
            self.put(body)
            allow, reason = allowlist_hook.decide(event("SN-1"), self.s3, BUCKET, KEY)
            self.assertFalse(allow, body)
            self.assertTrue("invalid" in reason or "UTF-8" in reason, reason)
            self.assertFalse(self.answer(event("SN-1")), body)

    def test_an_empty_allowlist_denies(self):
        self.put(b"# nobody yet\n\n")
        self.assertFalse(self.answer(event("SN-1")))

    def test_a_missing_or_bad_serial_parameter_denies(self):
        self.put(b"SN-1\n")
        self.assertFalse(self.answer(event(None, ThingName="SN-1")))
        self.assertFalse(self.answer(event("")))
        self.assertFalse(self.answer(event("SN-1\n")))
        self.assertFalse(self.answer(event(["SN-1"])))
        self.assertFalse(self.answer({"parameters": "SN-1"}))
        self.assertFalse(self.answer({}))

    def test_the_key_comes_from_the_environment(self):
        self.s3.put_object(Bucket=BUCKET, Key="other/list.txt", Body=b"SN-9\n")
        os.environ["ALLOWLIST_KEY"] = "other/list.txt"
        try:
            self.assertTrue(self.answer(event("SN-9")))
        finally:
            del os.environ["ALLOWLIST_KEY"]


ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "ALLOWLIST_BUCKET", "ALLOWLIST_KEY")


class ParserMatchesAllowlistRs(unittest.TestCase):
    """The cases of allowlist.rs's unit tests give the same verdicts here."""

    def test_comments_blanks_and_whitespace(self):
        got = allowlist_hook.parse_allowlist("# fleet A\n\n  10000000abcdef01  \nSN-2 # spare unit\r\n\t\n")
        self.assertEqual(got, {"10000000abcdef01", "SN-2"})

    def test_every_problem_is_reported(self):
        with self.assertRaises(allowlist_hook.InvalidAllowlist) as ctx:
            allowlist_hook.parse_allowlist("abc\nab c\nabc\nx/y\nok\n\u00e9t\u00e9\n")
        message = str(ctx.exception)
        for needle in ["line 2:", "line 3: duplicate", "line 4:", "line 6:"]:
            self.assertIn(needle, message)
        self.assertNotIn("line 5", message)

    def test_lengths_and_odd_input(self):
        self.assertEqual(allowlist_hook.parse_allowlist("a" * 128), {"a" * 128})
        for bad in ["a" * 129, "\ufeffabc", "a\u0000b", "\x1cabc"]:
            with self.assertRaises(allowlist_hook.InvalidAllowlist, msg=repr(bad)):
                allowlist_hook.parse_allowlist(bad)
        self.assertEqual(allowlist_hook.parse_allowlist(""), set())
        self.assertEqual(allowlist_hook.parse_allowlist("#\n####\n#"), set())
        self.assertEqual(allowlist_hook.parse_allowlist("\u3000SN-1\u00a0"), {"SN-1"})


if __name__ == "__main__":
    unittest.main()
