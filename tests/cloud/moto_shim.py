"""moto server plus the AWS APIs moto 5.2.5 lacks, for imgbuild's cloud tests.

moto answers S3, STS and most of IoT, but not IoT fleet-provisioning templates (HTTP 500)
and none of Greengrass v2 (404). This shim is a WSGI middleware in front of moto's own
server application that answers those routes from small in-memory tables and hands every
other request to moto unchanged:

  IoT (signing name "iot"):
    POST   /provisioning-templates                  CreateProvisioningTemplate
    GET    /provisioning-templates                  ListProvisioningTemplates
    GET    /provisioning-templates/{name}           DescribeProvisioningTemplate
    DELETE /provisioning-templates/{name}           DeleteProvisioningTemplate
  Greengrass v2 (signing name "greengrass", paths under /greengrass/v2/):
    POST   /greengrass/v2/deployments               CreateDeployment
    GET    /greengrass/v2/deployments               ListDeployments
    GET    /greengrass/v2/deployments/{id}          GetDeployment
    GET    /greengrass/v2/coreDevices               ListCoreDevices
    GET    /greengrass/v2/coreDevices/{name}        GetCoreDevice
    DELETE /greengrass/v2/coreDevices/{name}        DeleteCoreDevice
  S3 ListParts: moto's answer is passed through with its root element renamed from
    ListPartsResponse to ListPartsResult (what AWS sends and the Rust SDK requires).
  Test seeding (unsigned, not an AWS API: a core device registers itself on AWS):
    POST   /_shim/greengrass/v2/coreDevices/{name}  creates a HEALTHY core device

Usage: python moto_shim.py [--host 127.0.0.1] [--port 0] [--exit-on-stdin-eof]
With port 0 the system picks a free port. Once the socket is listening the shim prints
`moto-shim listening on http://HOST:PORT` on stdout (flushed), which is what the Rust
test harness waits for.
"""

import argparse
import json
import os
import re
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, unquote

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


class Reply(Exception):
    """An early HTTP answer (used for errors) raised from a handler."""

    def __init__(self, status, body, error_type=None):
        super().__init__(error_type or status)
        self.status = status
        self.body = body
        self.error_type = error_type


def not_found(what):
    return Reply(404, {"message": f"{what} not found"}, "ResourceNotFoundException")


def now():
    return time.time()


class Store:
    """The in-memory tables of the emulated APIs, shared by the server's threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.templates = {}
        self.deployments = []
        self.core_devices = {}

    # --- IoT provisioning templates ---------------------------------------------------
    def create_template(self, region, body):
        name = body.get("templateName")
        if not name or "templateBody" not in body or "provisioningRoleArn" not in body:
            raise Reply(
                400,
                {"message": "templateName, templateBody and provisioningRoleArn are required"},
                "InvalidRequestException",
            )
        with self.lock:
            if name in self.templates:
                raise Reply(
                    409, {"message": f"template {name} already exists"}, "ResourceAlreadyExistsException"
                )
            arn = f"arn:aws:iot:{region}:{ACCOUNT_ID}:provisioningtemplate/{name}"
            self.templates[name] = {
                "templateArn": arn,
                "templateName": name,
                "description": body.get("description", ""),
                "creationDate": now(),
                "lastModifiedDate": now(),
                "defaultVersionId": 1,
                "templateBody": body["templateBody"],
                "enabled": bool(body.get("enabled", False)),
                "provisioningRoleArn": body["provisioningRoleArn"],
                "type": body.get("type", "FLEET_PROVISIONING"),
            }
        return 200, {"templateArn": arn, "templateName": name, "defaultVersionId": 1}

    def describe_template(self, name):
        with self.lock:
            if name not in self.templates:
                raise not_found(f"provisioning template {name}")
            return 200, dict(self.templates[name])

    def list_templates(self):
        with self.lock:
            keys = ("templateArn", "templateName", "description", "creationDate", "lastModifiedDate", "enabled", "type")
            items = [{k: t[k] for k in keys} for t in self.templates.values()]
        return 200, {"templates": items}

    def delete_template(self, name):
        with self.lock:
            if self.templates.pop(name, None) is None:
                raise not_found(f"provisioning template {name}")
        return 200, {}

    # --- Greengrass v2 ----------------------------------------------------------------
    def create_deployment(self, body):
        target = body.get("targetArn")
        if not target:
            raise Reply(400, {"message": "targetArn is required"}, "ValidationException")
        deployment_id = str(uuid.uuid4())
        with self.lock:
            for d in self.deployments:
                if d["targetArn"] == target:
                    d["isLatestForTarget"] = False
            revision = 1 + sum(1 for d in self.deployments if d["targetArn"] == target)
            self.deployments.append(
                {
                    "targetArn": target,
                    "revisionId": str(revision),
                    "deploymentId": deployment_id,
                    "deploymentName": body.get("deploymentName", ""),
                    "creationTimestamp": now(),
                    "deploymentStatus": "ACTIVE",
                    "isLatestForTarget": True,
                    "components": body.get("components", {}),
                    "deploymentPolicies": body.get("deploymentPolicies", {}),
                    "iotJobConfiguration": body.get("iotJobConfiguration", {}),
                    "tags": body.get("tags", {}),
                }
            )
        job_id = str(uuid.uuid4())
        return 201, {
            "deploymentId": deployment_id,
            "iotJobId": job_id,
            "iotJobArn": f"arn:aws:iot:{DEFAULT_REGION}:{ACCOUNT_ID}:job/{job_id}",
        }

    def list_deployments(self, query):
        target = query.get("targetArn", [None])[0]
        summary_keys = (
            "targetArn",
            "revisionId",
            "deploymentId",
            "deploymentName",
            "creationTimestamp",
            "deploymentStatus",
            "isLatestForTarget",
        )
        with self.lock:
            items = [
                {k: d[k] for k in summary_keys}
                for d in self.deployments
                if target is None or d["targetArn"] == target
            ]
        return 200, {"deployments": items}

    def get_deployment(self, deployment_id):
        with self.lock:
            for d in self.deployments:
                if d["deploymentId"] == deployment_id:
                    return 200, dict(d)
        raise not_found(f"deployment {deployment_id}")

    def seed_core_device(self, name):
        with self.lock:
            self.core_devices[name] = {
                "coreDeviceThingName": name,
                "status": "HEALTHY",
                "lastStatusUpdateTimestamp": now(),
            }
        return 200, dict(self.core_devices[name])

    def list_core_devices(self):
        with self.lock:
            items = sorted(self.core_devices.values(), key=lambda c: c["coreDeviceThingName"])
        return 200, {"coreDevices": [dict(c) for c in items]}

    def get_core_device(self, name):
        with self.lock:
            if name not in self.core_devices:
                raise not_found(f"core device {name}")
            return 200, dict(self.core_devices[name])

    def delete_core_device(self, name):
        with self.lock:
            if self.core_devices.pop(name, None) is None:
                raise not_found(f"core device {name}")
        return 204, None


def signing_scope(environ):
    """(region, service) from the SigV4 Authorization header, or (None, None) if unsigned."""
    match = SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return (match.group(1), match.group(2)) if match else (None, None)


def read_json(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise Reply(400, {"message": f"request body is not JSON: {err}"}, "SerializationException")
    if not isinstance(body, dict):
        raise Reply(400, {"message": "request body must be a JSON object"}, "SerializationException")
    return body


def route(store, environ):
    """Answers (status, body) for the emulated routes, or None to hand the request to moto."""
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    region, service = signing_scope(environ)
    region = region or DEFAULT_REGION
    parts = [unquote(p) for p in path.strip("/").split("/")]

    if parts[:4] == ["_shim", "greengrass", "v2", "coreDevices"] and len(parts) == 5 and method == "POST":
        return store.seed_core_device(parts[4])

    if service == "iot" and parts[0] == "provisioning-templates":
        if len(parts) == 1 and method == "POST":
            return store.create_template(region, read_json(environ))
        if len(parts) == 1 and method == "GET":
            return store.list_templates()
        if len(parts) == 2 and method == "GET":
            return store.describe_template(parts[1])
        if len(parts) == 2 and method == "DELETE":
            return store.delete_template(parts[1])
        return None

    if service == "greengrass" and parts[:2] == ["greengrass", "v2"] and len(parts) >= 3:
        resource, rest = parts[2], parts[3:]
        if resource == "deployments" and not rest and method == "POST":
            return store.create_deployment(read_json(environ))
        if resource == "deployments" and not rest and method == "GET":
            return store.list_deployments(query)
        if resource == "deployments" and len(rest) == 1 and method == "GET":
            return store.get_deployment(rest[0])
        if resource == "coreDevices" and not rest and method == "GET":
            return store.list_core_devices()
        if resource == "coreDevices" and len(rest) == 1 and method == "GET":
            return store.get_core_device(rest[0])
        if resource == "coreDevices" and len(rest) == 1 and method == "DELETE":
            return store.delete_core_device(rest[0])
        raise Reply(404, {"message": f"{method} {path} is not emulated"}, "ResourceNotFoundException")
    return None


def is_s3_list_parts(environ):
    """S3 ListParts: GET /bucket/key?uploadId=... (signed for s3, or presigned)."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    _, service = signing_scope(environ)
    return environ["REQUEST_METHOD"] == "GET" and "uploadId" in query and service in ("s3", None)


def fix_list_parts(app, environ, start_response):
    """moto 5.2.5 names the root element of the ListParts answer ListPartsResponse; AWS (and the
    SDKs that check it) use ListPartsResult. Rename it, leaving everything else as moto sent it."""
    captured = {}

    def capture(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    chunks = app(environ, capture)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    body = body.replace(b"<ListPartsResponse", b"<ListPartsResult").replace(
        b"</ListPartsResponse>", b"</ListPartsResult>"
    )
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    start_response(captured["status"], headers)
    return [body]


STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}


class ShimApp:
    """WSGI app: the emulated routes first, moto for everything else."""

    def __init__(self, moto_app):
        self.moto_app = moto_app
        self.store = Store()

    def __call__(self, environ, start_response):
        headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))]
        try:
            answer = route(self.store, environ)
        except Reply as reply:
            answer = (reply.status, dict(reply.body, __type=reply.error_type))
            if reply.error_type:
                headers.append(("x-amzn-ErrorType", reply.error_type))
        if answer is None:
            if is_s3_list_parts(environ):
                return fix_list_parts(self.moto_app, environ, start_response)
            return self.moto_app(environ, start_response)
        status, body = answer
        payload = b"" if body is None else json.dumps(body).encode()
        headers.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {STATUS_TEXT.get(status, 'Status')}", headers)
        return [payload]


def exit_on_stdin_eof():
    """Ends the process once stdin reaches end of file, so a killed test leaves no server behind."""
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when standard input closes (the test process that started the shim is gone)",
    )
    args = parser.parse_args(argv)
    if args.exit_on_stdin_eof:
        threading.Thread(target=exit_on_stdin_eof, daemon=True).start()
    moto_app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        args.host, args.port, ShimApp(moto_app), threaded=True, request_handler=MotoRequestHandler
    )
    os.environ.setdefault("MOTO_PORT", str(server.server_port))
    print(f"moto-shim listening on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
