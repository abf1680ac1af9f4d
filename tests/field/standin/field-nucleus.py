#!/usr/bin/python3
"""Field test stand-in for the AWS IoT Greengrass nucleus process (what greengrass.service runs).

The real nucleus cannot be downloaded in CI; this stand-in does, in the guest, what the nucleus
and its FleetProvisioningByClaim plugin do on launch, with the same files, timing and failure
modes. What it models, and where that was read:

- aws-greengrass/aws-greengrass-nucleus, KernelLifecycle.java: on launch the config is read from
  config/config.tlog when present (it persists every change), else from config/config.yaml (what
  the installer left); effectiveConfig.yaml is written ONCE at launch, before the provisioning
  plugin has run, and again only on a clean shutdown (softShutdown) - not when provisioning
  completes. The plugin runs asynchronously on the kernel's executor ("Running provisioning
  plugin: ..."), only when the device is not yet configured to talk to the cloud
  (DeviceConfiguration.isDeviceConfiguredToTalkToCloud: thing name, certificate, key, root CA and
  data endpoint set). A RetryableProvisioningException is retried 3 times (RetryUtils); any other
  failure is logged "Caught exception while running provisioning plugin. Moving on to run
  Greengrass without provisioning" and the nucleus keeps running unprovisioned.
- ProvisioningConfigUpdateHelper.java: success merges system.{certificateFilePath, privateKeyPath,
  thingName, rootCaPath} and the nucleus's awsRegion/iotCredEndpoint/iotDataEndpoint/iotRoleAlias
  into the config; ConfigurationWriter/Tlogline.java append each change to config.tlog as
  {"TS":ms,"TP":[path],"W":"changed","V":value} - one line per change, written by Jackson's
  ObjectMapper with its defaults: compact JSON, no spaces (TLOG_SEPARATORS below; Python's own
  default would put spaces after ',' and ':', a format the real nucleus never writes).
- aws-greengrass/aws-greengrass-fleet-provisioning-by-claim, FleetProvisioningByClaimPlugin.java,
  IotIdentityHelper.java, FutureExceptionHandler.java, MqttConnectionHelper.java: mTLS MQTT to
  iotDataEndpoint:mqttPort with the claim certificate/key and rootCaPath (client id = deviceId or
  a random UUID); a failed connect is retried every 5 s for ever ("Retrying MQTT connect which
  failed in provisioning plugin"); then CreateKeysAndCertificate (subscribe accepted+rejected,
  publish), thingCert.crt and privKey.key written under rootPath (owner read/write only) BEFORE
  RegisterThing with the template name and templateParameters; a rejected answer fails with its
  errorMessage ("Caught exception during registering Iot Thing"); 30 s per answer, a timeout is
  retryable.
The MQTT client is the real one: the AWS IoT Device SDK v2 for Python (awsiotsdk, awscrt), the
same CRT the plugin's Java SDK wraps.

Log lines go to ROOT/logs/greengrass.log in the nucleus's text format
("TIMESTAMP [LEVEL] (thread) logger: message. {}"), and to stdout (loader.log).
Usage: field-nucleus.py ROOT
"""

import json
import os
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/greengrass/v2"
# How long the stand-in's "kernel launch" takes before the plugin runs (the JVM nucleus needs tens
# of seconds on a Pi); the field test keeps it short.
LAUNCH_DELAY_SECONDS = int(os.environ.get("FIELD_NUCLEUS_DELAY", "15"))
TIMEOUT = 30  # FutureExceptionHandler.AWS_IOT_DEFAULT_TIMEOUT_SECONDS
PLUGIN = "aws.greengrass.FleetProvisioningByClaim"
NUCLEUS = "aws.greengrass.Nucleus"
LOG_LOCK = threading.Lock()


def log(level, thread, logger, message, cause=None):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    line = f"{stamp} [{level}] ({thread}) {logger}: {message}. {{}}\n"
    if cause is not None:
        line += cause + "\n"
    with LOG_LOCK:
        os.makedirs(os.path.join(ROOT, "logs"), exist_ok=True)
        with open(os.path.join(ROOT, "logs", "greengrass.log"), "a", encoding="utf-8") as f:
            f.write(line)
        sys.stdout.write(line)
        sys.stdout.flush()


# ---------------------------------------------------------------- config (YAML subset, tlog)

def parse_yaml(text):
    """The YAML the installer copied: nested "key: value" maps, values JSON-encoded or plain."""
    root = {}
    stack = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.strip().startswith("#") or raw.strip() == "---":
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        if line.startswith('"'):
            end = line.index('":')
            key, rest = json.loads(line[:end + 1]), line[end + 2:].strip()
        else:
            key, _, rest = line.partition(":")
            key, rest = key.strip(), rest.strip()
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if rest == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        else:
            try:
                parent[key] = json.loads(rest)
            except ValueError:
                parent[key] = rest.strip("'\"")
    return root


def dump_yaml(value, indent=0):
    out = []
    for key, v in value.items():
        if isinstance(v, dict):
            out.append(" " * indent + f"{json.dumps(key)}:" + (" {}" if not v else ""))
            out.extend(dump_yaml(v, indent + 2))
        else:
            out.append(" " * indent + f"{json.dumps(key)}: {json.dumps(v)}")
    return out


def set_path(config, path, value):
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


# Jackson's ObjectMapper default: compact JSON.
TLOG_SEPARATORS = (",", ":")


def tlog_line(path, value):
    """One config.tlog line (Tlogline: TS, TP, W, V) as the nucleus's ConfigurationWriter writes it."""
    return json.dumps({"TS": int(time.time() * 1000), "TP": path, "W": "changed", "V": value},
                      separators=TLOG_SEPARATORS)


class Config:
    def __init__(self):
        self.dir = os.path.join(ROOT, "config")
        self.tlog = os.path.join(self.dir, "config.tlog")
        self.data = {}
        if os.path.exists(self.tlog):
            with open(self.tlog, encoding="utf-8") as f:
                for line in f:
                    entry = json.loads(line)
                    if entry.get("W") == "changed":
                        set_path(self.data, entry["TP"], entry["V"])
        else:
            with open(os.path.join(self.dir, "config.yaml"), encoding="utf-8") as f:
                self.data = parse_yaml(f.read())
            self.data.setdefault("system", {}).setdefault("rootpath", ROOT)
            self.data["system"].setdefault("thingName", "")
            self.write_tlog_dump()

    def write_tlog_dump(self):
        lines = []

        def walk(node, path):
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, path + [k])
                else:
                    lines.append(tlog_line(path + [k], v))
        walk(self.data, [])
        with open(self.tlog + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.tlog + ".tmp", self.tlog)

    def update(self, path, value):
        set_path(self.data, path, value)
        with open(self.tlog, "a", encoding="utf-8") as f:
            f.write(tlog_line(path, value) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_effective(self):
        path = os.path.join(self.dir, "effectiveConfig.yaml")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(["---"] + dump_yaml(self.data)) + "\n")
        os.replace(path + ".tmp", path)
        log("INFO", "main", "com.aws.greengrass.lifecyclemanager.Kernel", f"effective-config-dump-complete. file={path}")

    def provisioned(self):
        s = self.data.get("system", {})
        nucleus = self.data.get("services", {}).get(NUCLEUS, {}).get("configuration", {})
        return bool(s.get("thingName") and s.get("certificateFilePath") and s.get("privateKeyPath")
                    and s.get("rootCaPath") and nucleus.get("iotDataEndpoint"))


# ---------------------------------------------------------------- the plugin

class Retryable(Exception):
    """RetryableProvisioningException."""


class CrtFailure(Exception):
    """CrtRuntimeException (rethrown by the plugin as it is)."""


def wait(future, message):
    """FutureExceptionHandler.getFutureAfterCompletion: a timeout or MQTT error is retryable."""
    from awscrt.exceptions import AwsCrtError
    try:
        return future.result(TIMEOUT)
    except TimeoutError as e:
        log("WARN", "pool-2-thread-1", "com.aws.greengrass.FutureExceptionHandler", message,
            f"java.util.concurrent.TimeoutException: {e}")
        raise Retryable(message) from e
    except AwsCrtError as e:
        log("WARN", "pool-2-thread-1", "com.aws.greengrass.FutureExceptionHandler", message,
            f"software.amazon.awssdk.crt.mqtt.MqttException: {e.name}: {e.message}")
        raise Retryable(message) from e
    except Exception as e:
        log("ERROR", "pool-2-thread-1", "com.aws.greengrass.FutureExceptionHandler", message,
            f"java.util.concurrent.ExecutionException: java.lang.RuntimeException: {e}")
        raise RuntimeError(str(e)) from e


def subscribe_outcomes(identity, request, topic, logged, sub, qos, result, on_accepted):
    """Subscribes to the accepted and the rejected topic of the iotidentity `request`, in that order,
    as the plugin does: `on_accepted` gets the accepted response, a rejection fails `result`."""
    for outcome, callback in (("accepted", on_accepted),
                              ("rejected", lambda err: result.set_exception(RuntimeError(err.error_message)))):
        fut, _ = getattr(identity, f"subscribe_to_{request}_{outcome}")(sub, qos, callback)
        wait(fut, f"Failed to subscribe to {topic} {outcome} topic")
        log("INFO", "pool-2-thread-1", "com.aws.greengrass.IotIdentityHelper",
            f"Subscribed to {logged}{outcome.capitalize()}")


def run_plugin(p):
    """FleetProvisioningByClaimPlugin.updateIdentityConfiguration; returns (thingName, cert, key)."""
    from awscrt import mqtt
    from awsiot import iotidentity, mqtt_connection_builder
    lg = "com.aws.greengrass.FleetProvisioningByClaimPlugin"
    for required in ("provisioningTemplate", "claimCertificatePath", "claimCertificatePrivateKeyPath",
                     "rootCaPath", "iotDataEndpoint", "rootPath"):
        if not p.get(required):
            raise ValueError(f"[Required parameter {required} missing for {PLUGIN}]")
    try:
        connection = mqtt_connection_builder.mtls_from_path(
            endpoint=p["iotDataEndpoint"], port=int(p.get("mqttPort") or 8883),
            cert_filepath=p["claimCertificatePath"], pri_key_filepath=p["claimCertificatePrivateKeyPath"],
            ca_filepath=p["rootCaPath"], client_id=str(p.get("deviceId") or uuid.uuid4()),
            clean_session=True, keep_alive_secs=30)
    except Exception as e:  # CrtRuntimeException while building the TLS context (files missing, ...)
        log("ERROR", "pool-2-thread-1", lg, "Exception encountered while getting device identity information",
            f"software.amazon.awssdk.crt.CrtRuntimeException: {e}")
        raise CrtFailure(str(e)) from e
    while True:
        try:
            wait(connection.connect(), "Caught exception while establishing connection to AWS Iot")
            break
        except Retryable:
            log("INFO", "pool-2-thread-1", lg, "Retrying MQTT connect which failed in provisioning plugin")
            time.sleep(5)
    identity = iotidentity.IotIdentityClient(connection)
    qos = mqtt.QoS.AT_LEAST_ONCE
    root = p["rootPath"]
    cert_path = os.path.normpath(p.get("certificatePath") or os.path.join(root, "thingCert.crt"))
    key_path = os.path.normpath(p.get("privateKeyPath") or os.path.join(root, "privKey.key"))

    created = __import__("concurrent.futures").futures.Future()
    sub = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
    subscribe_outcomes(identity, "create_keys_and_certificate", "create keys and certificate",
                       "CreateKeysAndCertificate", sub, qos, created, created.set_result)
    wait(identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), qos),
         "Failed to publish to create keys and certificate topic")
    log("INFO", "pool-2-thread-1", "com.aws.greengrass.IotIdentityHelper", "Published to CreateKeysAndCertificate")
    response = wait(created, "Caught exception during PublishCreateKeysAndCertificate")
    for path, content in ((cert_path, response.certificate_pem), (key_path, response.private_key)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(path, 0o600)

    registered = __import__("concurrent.futures").futures.Future()
    template = p["provisioningTemplate"]
    sub = iotidentity.RegisterThingSubscriptionRequest(template_name=template)

    def accepted(r):
        log("INFO", "Thread-1", "com.aws.greengrass.IotIdentityHelper",
            f"Received register thing response for thing name {r.thing_name}")
        registered.set_result(r)
    subscribe_outcomes(identity, "register_thing", "register thing", "SubscribeToRegisterThing",
                       sub, qos, registered, accepted)
    parameters = {k: str(v) for k, v in (p.get("templateParameters") or {}).items()}
    wait(identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=response.certificate_ownership_token,
        parameters=parameters), qos), "Failed to publish to register thing topic")
    result = wait(registered, "Caught exception during registering Iot Thing")
    wait(connection.disconnect(), "Caught exception while disconnecting")
    return result.thing_name, cert_path, key_path


def provision(config):
    lg = "com.aws.greengrass.lifecyclemanager.KernelLifecycle"
    p = config.data.get("services", {}).get(PLUGIN, {}).get("configuration", {})
    for attempt in (1, 2, 3):  # MAX_PROVISIONING_PLUGIN_RETRY_ATTEMPTS
        try:
            thing, cert, key = run_plugin(p)
            break
        except Retryable as e:
            if attempt == 3:
                log("ERROR", "pool-2-thread-1", lg, "Caught exception while running provisioning plugin. Moving on "
                    "to run Greengrass without provisioning",
                    f"com.aws.greengrass.provisioning.exceptions.RetryableProvisioningException: {e}")
                return
            log("WARN", "pool-2-thread-1", "com.aws.greengrass.util.RetryUtils",
                f"task failed and will be retried. task-description=Running provisioning plugin, task-attempt={attempt}")
            time.sleep(attempt * 10)
        except Exception as e:  # pylint: disable=broad-except - the nucleus catches Exception here too
            cause = ("software.amazon.awssdk.crt.CrtRuntimeException" if isinstance(e, CrtFailure)
                     else "com.aws.greengrass.DeviceProvisioningRuntimeException: java.lang.RuntimeException")
            log("ERROR", "pool-2-thread-1", lg, "Caught exception while running provisioning plugin. Moving on to "
                "run Greengrass without provisioning", f"{cause}: {e}")
            return
    for name, value in (("certificateFilePath", cert), ("privateKeyPath", key), ("thingName", thing),
                        ("rootCaPath", p["rootCaPath"])):
        config.update(["system", name], value)
    for name, key in (("awsRegion", "awsRegion"), ("iotCredEndpoint", "iotCredentialEndpoint"),
                      ("iotDataEndpoint", "iotDataEndpoint"), ("iotRoleAlias", "iotRoleAlias")):
        if p.get(key):
            config.update(["services", NUCLEUS, "configuration", name], p[key])
    log("INFO", "pool-2-thread-1", lg, f"Updated provisioning configuration. PluginName={PLUGIN}")


def main():
    config = Config()
    stop = threading.Event()

    def shutdown(_signum, _frame):
        # KernelLifecycle.softShutdown: "Update effective config with our last known state"
        log("INFO", "main", "com.aws.greengrass.lifecyclemanager.KernelLifecycle", "system-shutdown")
        config.write_effective()
        os._exit(0)
    signal.signal(signal.SIGTERM, shutdown)
    log("INFO", "main", "com.aws.greengrass.lifecyclemanager.KernelLifecycle", f"Launch Nucleus. rootPath={ROOT}")
    time.sleep(LAUNCH_DELAY_SECONDS)
    if not config.provisioned():
        # logged by the executor task in the real nucleus; here before it starts, so that a watcher
        # never sees "system-start" without it on a launch that provisions
        log("INFO", "pool-2-thread-1", "com.aws.greengrass.lifecyclemanager.KernelLifecycle",
            f"Running provisioning plugin: {PLUGIN}")
        threading.Thread(target=provision, args=(config,), daemon=True).start()
    config.write_effective()
    log("INFO", "main", "com.aws.greengrass.lifecyclemanager.Kernel", "system-start")
    stop.wait()


if __name__ == "__main__":
    main()
