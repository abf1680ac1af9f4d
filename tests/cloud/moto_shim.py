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
    POST   /dynamic-thing-groups/{name}             CreateDynamicThingGroup
    DELETE /dynamic-thing-groups/{name}             DeleteDynamicThingGroup
    (moto's DescribeThingGroup, ListThingsInThingGroup, Add/RemoveThingToThingGroup are
    adjusted for dynamic groups: see the "dynamic thing groups" section)
  Greengrass v2 (signing name "greengrass", paths under /greengrass/v2/):
    POST   /greengrass/v2/deployments               CreateDeployment
    GET    /greengrass/v2/deployments               ListDeployments
    GET    /greengrass/v2/deployments/{id}          GetDeployment
    GET    /greengrass/v2/coreDevices               ListCoreDevices
    GET    /greengrass/v2/coreDevices/{name}        GetCoreDevice
    DELETE /greengrass/v2/coreDevices/{name}        DeleteCoreDevice
    GET    /greengrass/v2/coreDevices/{name}/effectiveDeployments  ListEffectiveDeployments
    POST   /greengrass/v2/createComponentVersion    CreateComponentVersion (inline recipe)
    GET    /greengrass/v2/components                ListComponents (scope PRIVATE|PUBLIC)
    GET    /greengrass/v2/components/{arn}/versions ListComponentVersions
  S3 ListParts: moto's answer is passed through with its root element renamed from
    ListPartsResponse to ListPartsResult (what AWS sends and the Rust SDK requires); likewise
    GetBucketVersioning (GetBucketVersioningResponse -> VersioningConfiguration).
  Provisioning templates keep preProvisioningHook and have ARNs in the region's partition.
  IoT DescribeEndpoint answers the same address for the same region and type every time.
  IAM: moto's AWS managed policies are loaded (MOTO_IAM_LOAD_MANAGED_POLICIES=true).
  Test seeding (unsigned, not an AWS API: a core device registers itself on AWS):
    POST   /_shim/greengrass/v2/coreDevices/{name}  creates a HEALTHY core device
    POST   /_shim/greengrass/v2/coreDevices/{name}/behaviour  {"outcome": "SUCCEEDED"|"FAILED"|
           "REJECTED"|"OFFLINE", "reason": "..."}: how this device handles later deployments
    POST   /_shim/faults  {"method": "DELETE", "path": "^/certificates/", "times": 1,
           "status": 403, "code": "AccessDeniedException"}: the next matching requests fail
           (before they reach moto or the routes above), e.g. to interrupt a run midway

Usage: python moto_shim.py [--host 127.0.0.1] [--port 0] [--exit-on-stdin-eof]
With port 0 the system picks a free port. Once the socket is listening the shim prints
`moto-shim listening on http://HOST:PORT` on stdout (flushed), which is what the Rust
test harness waits for.
"""

import argparse
import base64
import io
import json
import os
import re
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, unquote

import yaml
from werkzeug.serving import make_server

# AWS managed IAM policies (e.g. service-role/AWSIoTThingsRegistration, which `fleet init`
# attaches to the provisioning role) exist only when moto loads them; IAM loads lazily, so
# tests that never touch IAM do not pay for it. Set before moto reads its settings.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")

from moto.iot.models import iot_backends
from moto.utilities.utils import get_partition

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
            # ARNs in the region's partition (aws-cn in cn-*, aws-us-gov in us-gov-*), as AWS
            # and moto's own IoT resources have them.
            arn = f"arn:{get_partition(region)}:iot:{region}:{ACCOUNT_ID}:provisioningtemplate/{name}"
            hook = body.get("preProvisioningHook")
            if hook is not None and (not isinstance(hook, dict) or not hook.get("targetArn")):
                raise Reply(400, {"message": "preProvisioningHook needs a targetArn"}, "InvalidRequestException")
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
            # CreateProvisioningTemplate's preProvisioningHook {targetArn, payloadVersion}
            # (AWS IoT API reference, ProvisioningHook; payloadVersion defaults to 2020-04-01),
            # answered by DescribeProvisioningTemplate as given.
            if hook is not None:
                self.templates[name]["preProvisioningHook"] = {
                    "targetArn": hook["targetArn"],
                    "payloadVersion": hook.get("payloadVersion", "2020-04-01"),
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
        job_id = str(uuid.uuid4())
        with self.lock:
            for d in self.deployments:
                if d["targetArn"] == target:
                    d["isLatestForTarget"] = False
                    # A new revision replaces the previous one: its IoT job is cancelled
                    # (developer guide, "Check deployment status").
                    if d["deploymentStatus"] == "ACTIVE":
                        d["deploymentStatus"] = "INACTIVE"
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
                    "iotJobId": job_id,
                }
            )
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



# --- fleet operations (issue 14): deployments that report, components, dynamic groups, faults ---
#
# Read first (AWS IoT Greengrass V2 API reference and developer guide):
#  - ListEffectiveDeployments (GET /greengrass/v2/coreDevices/{name}/effectiveDeployments):
#    per core device, each deployment job with coreDeviceExecutionStatus IN_PROGRESS | QUEUED |
#    FAILED | COMPLETED | TIMED_OUT | CANCELED | REJECTED | SUCCEEDED, reason, statusDetails
#    {errorStack, errorTypes}, creation/modified timestamps. Devices report asynchronously: a job
#    is QUEUED until the device takes it, IN_PROGRESS while it applies it, then terminal; an
#    offline device stays QUEUED. A new revision for the same target cancels the previous job.
#  - ListCoreDevices thingGroupArn: "only core devices that have successfully deployed a
#    deployment that targets the thing group"; removed devices stay listed.
#  - Core devices send a status update when they receive a deployment and when a component
#    breaks (status HEALTHY | UNHEALTHY, lastStatusUpdateTimestamp).
#  - ListComponentVersions (GET /greengrass/v2/components/{arn}/versions): greater versions
#    first; arn pattern arn:PARTITION:greengrass:REGION:(aws|ACCOUNT):components:NAME, "aws" for
#    public components. ListComponents (GET /greengrass/v2/components?scope=PRIVATE|PUBLIC)
#    gives each component's latestVersion. CreateComponentVersion (POST
#    /greengrass/v2/createComponentVersion) takes a base64 inlineRecipe (JSON or YAML) and
#    answers 201 with the component version ARN; an existing version is a ConflictException.
#  - IoT DescribeThingGroup answers dynamic groups with indexName, queryString, queryVersion
#    and status ACTIVE|BUILDING|REBUILDING; CreateDynamicThingGroup is
#    POST /dynamic-thing-groups/{name} (default index AWS_Things, query version 2017-09-30);
#    things cannot be added to or removed from a dynamic group by hand.
# Each ListEffectiveDeployments call moves the caller's pending jobs on by one step, so tests
# see QUEUED -> IN_PROGRESS -> terminal over successive polls, as a poller does on AWS.

# A small public catalog (versions as AWS publishes them; the tests only need more than one).
PUBLIC_COMPONENTS = {
    "aws.greengrass.Nucleus": ["2.14.3", "2.15.0", "2.16.0"],
    "aws.greengrass.Cli": ["2.14.3", "2.15.0", "2.16.0"],
    "aws.greengrass.LogManager": ["2.3.8", "2.3.9"],
}

FAILURE_DETAILS = {
    "FAILED": {
        "errorStack": ["DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"],
        "errorTypes": ["COMPONENT_ERROR"],
    },
    "REJECTED": {"errorStack": ["DEPLOYMENT_REJECTED"], "errorTypes": ["REQUEST_ERROR"]},
}


def version_key(version):
    """Semantic-version sort key (prereleases sort before the release)."""
    core, _, pre = version.partition("-")
    nums = []
    for part in core.split("."):
        nums.append(int(part) if part.isdigit() else 0)
    return (nums, pre == "", pre)


class Ops:
    """Greengrass deployment jobs per device, components, dynamic thing groups, faults."""

    def __init__(self, store):
        self.store = store
        self.lock = store.lock
        self.jobs = {}  # (deploymentId, thing) -> job dict
        self.behaviour = {}  # thing -> {"outcome": ..., "reason": ...}
        self.succeeded_targets = {}  # thing -> set of target ARNs deployed successfully
        self.components = {}  # component ARN (no version) -> {"name", "public", "versions": {}}
        self.dynamic_groups = {}  # name -> {"queryString", "indexName", "queryVersion"}
        self.faults = []

    # --- faults ---------------------------------------------------------------------------
    def add_fault(self, body):
        fault = {
            "method": body.get("method", "GET"),
            "path": re.compile(body.get("path", "^/")),
            "times": int(body.get("times", 1)),
            "status": int(body.get("status", 403)),
            "code": body.get("code", "AccessDeniedException"),
        }
        with self.lock:
            self.faults.append(fault)
        return 200, {}

    def take_fault(self, method, path):
        with self.lock:
            for f in self.faults:
                if f["times"] > 0 and f["method"] == method and f["path"].search(path):
                    f["times"] -= 1
                    return Reply(
                        f["status"],
                        {"message": f"injected by the test: {method} {path} fails"},
                        f["code"],
                    )
        return None

    # --- dynamic thing groups ---------------------------------------------------------------
    def create_dynamic_group(self, region, name, body):
        query = body.get("queryString")
        if not query:
            raise Reply(400, {"message": "queryString is required"}, "InvalidRequestException")
        backend = iot_backends[ACCOUNT_ID][region]
        _, arn, group_id = backend.create_thing_group(name, None, body.get("thingGroupProperties") or {})
        info = {
            "indexName": body.get("indexName", "AWS_Things"),
            "queryString": query,
            "queryVersion": body.get("queryVersion", "2017-09-30"),
        }
        with self.lock:
            self.dynamic_groups[name] = info
        return 200, dict(info, thingGroupName=name, thingGroupArn=arn, thingGroupId=group_id)

    def delete_dynamic_group(self, region, name):
        with self.lock:
            if self.dynamic_groups.pop(name, None) is None:
                raise not_found(f"dynamic thing group {name}")
        iot_backends[ACCOUNT_ID][region].delete_thing_group(name)
        return 200, {}

    def group_members(self, region, name):
        backend = iot_backends[ACCOUNT_ID][region]
        dynamic = self.dynamic_groups.get(name)
        if dynamic:
            return sorted(t["thingName"] for t in backend.search_index(dynamic["queryString"]))
        try:
            return sorted(t.thing_name for t in backend.list_things_in_thing_group(name))
        except Exception:  # the group is gone
            return []

    # --- components -------------------------------------------------------------------------
    def _catalog(self, region):
        """The public components of a region (created on first use)."""
        for name, versions in PUBLIC_COMPONENTS.items():
            arn = f"arn:aws:greengrass:{region}:aws:components:{name}"
            if arn not in self.components:
                self.components[arn] = {
                    "name": name,
                    "public": True,
                    "versions": {v: {"creationTimestamp": now()} for v in versions},
                }

    def create_component_version(self, region, body):
        try:
            text = base64.b64decode(body.get("inlineRecipe", ""), validate=True).decode()
            recipe = yaml.safe_load(text)  # YAML is a superset of JSON
        except Exception as err:
            raise Reply(400, {"message": f"inlineRecipe is not a base64 JSON/YAML recipe: {err}"}, "ValidationException")
        if not isinstance(recipe, dict) or not recipe.get("ComponentName") or not recipe.get("ComponentVersion"):
            raise Reply(400, {"message": "the recipe needs ComponentName and ComponentVersion"}, "ValidationException")
        name, version = str(recipe["ComponentName"]), str(recipe["ComponentVersion"])
        arn = f"arn:aws:greengrass:{region}:{ACCOUNT_ID}:components:{name}"
        with self.lock:
            component = self.components.setdefault(arn, {"name": name, "public": False, "versions": {}})
            if version in component["versions"]:
                raise Reply(409, {"message": f"component version {name} {version} already exists"}, "ConflictException")
            created = now()
            component["versions"][version] = {"creationTimestamp": created}
        return 201, {
            "arn": f"{arn}:versions:{version}",
            "componentName": name,
            "componentVersion": version,
            "creationTimestamp": created,
            "status": {"componentState": "DEPLOYABLE", "message": "NONE", "errors": {}},
        }

    def list_components(self, region, query):
        scope = query.get("scope", ["PRIVATE"])[0]
        with self.lock:
            self._catalog(region)
            items = []
            for arn, c in sorted(self.components.items()):
                if c["public"] != (scope == "PUBLIC") or f":{region}:" not in arn or not c["versions"]:
                    continue
                latest = max(c["versions"], key=version_key)
                items.append(
                    {
                        "arn": arn,
                        "componentName": c["name"],
                        "latestVersion": {
                            "arn": f"{arn}:versions:{latest}",
                            "componentVersion": latest,
                            "creationTimestamp": c["versions"][latest]["creationTimestamp"],
                            "publisher": "AWS" if c["public"] else "",
                        },
                    }
                )
        return 200, {"components": items}

    def list_component_versions(self, region, arn):
        with self.lock:
            self._catalog(region)
            component = self.components.get(arn)
            if component is None:
                raise not_found(f"component {arn}")
            versions = sorted(component["versions"], key=version_key, reverse=True)
        return 200, {
            "componentVersions": [
                {"componentName": component["name"], "componentVersion": v, "arn": f"{arn}:versions:{v}"}
                for v in versions
            ]
        }

    # --- deployment jobs per core device ----------------------------------------------------
    def set_behaviour(self, thing, body):
        outcome = body.get("outcome", "SUCCEEDED")
        if outcome not in ("SUCCEEDED", "FAILED", "REJECTED", "OFFLINE"):
            raise Reply(400, {"message": f"unknown outcome {outcome}"}, "ValidationException")
        with self.lock:
            self.behaviour[thing] = {"outcome": outcome, "reason": body.get("reason", "")}
        return 200, {}

    def _targets(self, thing, region):
        """ARNs a deployment may target to reach `thing`: the thing and its groups."""
        backend = iot_backends[ACCOUNT_ID][region]
        arns = set()
        try:
            arns.add(backend.describe_thing(thing).arn)
        except Exception:
            return arns
        for group in list(backend.thing_groups.values()):
            if thing in self.group_members(region, group.thing_group_name):
                arns.add(group.arn)
        return arns

    def list_effective_deployments(self, region, thing):
        with self.lock:
            if thing not in self.store.core_devices:
                raise not_found(f"core device {thing}")
        targets = self._targets(thing, region)
        with self.lock:
            for d in self.store.deployments:
                key = (d["deploymentId"], thing)
                if key in self.jobs:
                    continue
                # A device gets the latest revision of each deployment that targets it.
                if d["targetArn"] in targets and d["isLatestForTarget"] and d["deploymentStatus"] == "ACTIVE":
                    self.jobs[key] = {
                        "deployment": d,
                        "status": "QUEUED",
                        "reason": "",
                        "creationTimestamp": now(),
                        "modifiedTimestamp": now(),
                        "fresh": True,  # reported QUEUED once before the device moves on
                    }
            items = []
            for (deployment_id, job_thing), job in self.jobs.items():
                if job_thing != thing:
                    continue
                if not job.pop("fresh", False):
                    self._advance(thing, job)
                d = job["deployment"]
                item = {
                    "deploymentId": deployment_id,
                    "deploymentName": d["deploymentName"],
                    "iotJobId": d.get("iotJobId", ""),
                    "iotJobArn": f"arn:aws:iot:{region}:{ACCOUNT_ID}:job/{d.get('iotJobId', '')}",
                    "targetArn": d["targetArn"],
                    "coreDeviceExecutionStatus": job["status"],
                    "reason": job["reason"],
                    "creationTimestamp": job["creationTimestamp"],
                    "modifiedTimestamp": job["modifiedTimestamp"],
                }
                if job["status"] in FAILURE_DETAILS:
                    item["statusDetails"] = FAILURE_DETAILS[job["status"]]
                items.append(item)
        return 200, {"effectiveDeployments": items}

    def _advance(self, thing, job):
        """One step of the device's work on a job (called with the lock held)."""
        status = job["status"]
        if status not in ("QUEUED", "IN_PROGRESS"):
            return
        d = job["deployment"]
        if d["deploymentStatus"] != "ACTIVE":
            status, reason = "CANCELED", "a newer revision of the deployment replaced it"
        else:
            behaviour = self.behaviour.get(thing, {"outcome": "SUCCEEDED", "reason": ""})
            outcome = behaviour["outcome"]
            if outcome == "OFFLINE":
                return
            if status == "QUEUED":
                status, reason = "IN_PROGRESS", ""
            elif outcome == "SUCCEEDED":
                status, reason = "SUCCEEDED", "SUCCESSFUL"
            else:
                status, reason = outcome, behaviour["reason"] or f"the device reported {outcome}"
        job["status"], job["reason"], job["modifiedTimestamp"] = status, reason, now()
        core = self.store.core_devices.get(thing)
        if status in ("SUCCEEDED", "FAILED") and core is not None:
            core["lastStatusUpdateTimestamp"] = now()
            core["status"] = "HEALTHY" if status == "SUCCEEDED" else "UNHEALTHY"
        if status == "SUCCEEDED":
            self.succeeded_targets.setdefault(thing, set()).add(d["targetArn"])

    def list_core_devices(self, query):
        group_arn = query.get("thingGroupArn", [None])[0]
        status = query.get("status", [None])[0]
        with self.lock:
            items = [
                dict(c)
                for name, c in sorted(self.store.core_devices.items())
                if (group_arn is None or group_arn in self.succeeded_targets.get(name, ()))
                and (status is None or c["status"] == status)
            ]
        return 200, {"coreDevices": items}


def ops_route(ops, environ):
    """Answers the fleet-operation routes, or None to go on with `route`."""
    method, path, query, region, service, parts = parse_request(environ)

    if parts == ["_shim", "faults"] and method == "POST":
        return ops.add_fault(read_json(environ))
    if parts[:4] == ["_shim", "greengrass", "v2", "coreDevices"] and len(parts) == 6 and parts[5] == "behaviour":
        return ops.set_behaviour(parts[4], read_json(environ))
    if service == "iot" and parts[0] == "dynamic-thing-groups" and len(parts) == 2:
        if method == "POST":
            return ops.create_dynamic_group(region, parts[1], read_json(environ))
        if method == "DELETE":
            return ops.delete_dynamic_group(region, parts[1])
    if service == "iot" and parts[:1] == ["thing-groups"] and len(parts) == 3 and parts[2] == "things":
        if parts[1] in ops.dynamic_groups and method == "GET":
            return 200, {"things": ops.group_members(region, parts[1])}
    if service == "greengrass" and parts[:2] == ["greengrass", "v2"] and len(parts) >= 3:
        resource, rest = parts[2], parts[3:]
        if resource == "coreDevices" and len(rest) == 2 and rest[1] == "effectiveDeployments" and method == "GET":
            return ops.list_effective_deployments(region, rest[0])
        if resource == "coreDevices" and not rest and method == "GET":
            return ops.list_core_devices(query)
        if resource == "createComponentVersion" and not rest and method == "POST":
            return ops.create_component_version(region, read_json(environ))
        if resource == "components" and not rest and method == "GET":
            return ops.list_components(region, query)
        if resource == "components" and len(rest) == 2 and rest[1] == "versions" and method == "GET":
            return ops.list_component_versions(region, rest[0])
    return None


def dynamic_group_of_request(ops, environ):
    """For moto-answered thing-group calls: the dynamic group a request names, if any."""
    region, service = signing_scope(environ)
    if service != "iot":
        return None, None
    path = environ.get("PATH_INFO", "")
    parts = [unquote(p) for p in path.strip("/").split("/")]
    method = environ["REQUEST_METHOD"]
    if parts[:1] == ["thing-groups"] and len(parts) == 2:
        if parts[1] in ("addThingToThingGroup", "removeThingFromThingGroup") and method == "PUT":
            # Read the body and put it back for moto.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            try:
                name = json.loads(raw or b"{}").get("thingGroupName")
            except ValueError:
                name = None
            if name in ops.dynamic_groups:
                return name, "membership"
        elif method == "GET" and parts[1] in ops.dynamic_groups:
            return parts[1], "describe"
    return None, None


def call_moto(app, environ):
    """Calls moto and returns (status line, headers, body bytes)."""
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
    return captured["status"], captured["headers"], body


def call_moto_json(app, environ):
    """Calls moto and returns (status line, headers, decoded JSON body)."""
    status, headers, body = call_moto(app, environ)
    return status, headers, json.loads(body or b"{}")


def parse_request(environ):
    """(method, path, query, region, service, path parts) of a request; the region is
    DEFAULT_REGION when the request is unsigned."""
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    region, service = signing_scope(environ)
    parts = [unquote(p) for p in path.strip("/").split("/")]
    return method, path, query, region or DEFAULT_REGION, service, parts


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
    method, path, query, region, service, parts = parse_request(environ)

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


def is_s3_get_versioning(environ):
    """S3 GetBucketVersioning: GET /bucket?versioning (signed for s3)."""
    _, service = signing_scope(environ)
    query = environ.get("QUERY_STRING", "")
    return environ["REQUEST_METHOD"] == "GET" and service == "s3" and "versioning" in parse_qs(query, keep_blank_values=True)


def is_s3_list_parts(environ):
    """S3 ListParts: GET /bucket/key?uploadId=... (signed for s3, or presigned)."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    _, service = signing_scope(environ)
    return environ["REQUEST_METHOD"] == "GET" and "uploadId" in query and service in ("s3", None)


def fix_list_parts(app, environ, start_response, old=b"ListPartsResponse", new=b"ListPartsResult"):
    """moto 5.2.5 names the root element of the ListParts answer ListPartsResponse; AWS (and the
    SDKs that check it) use ListPartsResult. Rename it, leaving everything else as moto sent it.
    Likewise GetBucketVersioning: moto's root is GetBucketVersioningResponse, AWS's (S3 API
    reference, GetBucketVersioning response syntax) VersioningConfiguration."""
    status, headers, body = call_moto(app, environ)
    body = body.replace(b"<" + old, b"<" + new).replace(b"</" + old + b">", b"</" + new + b">")
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}


class ShimApp:
    """WSGI app: the emulated routes first, moto for everything else."""

    def __init__(self, moto_app):
        self.moto_app = moto_app
        self.store = Store()
        self.ops = Ops(self.store)
        self.endpoints = {}

    def stable_endpoint(self, environ):
        """IoT DescribeEndpoint (GET /endpoint?endpointType=T): an account's endpoints are fixed
        on AWS (`fleet init` compares the published parameters with them), but moto 5.2.5 makes
        a new random address on every call. The first answer per region and type is kept."""
        region, service = signing_scope(environ)
        if service != "iot" or environ["REQUEST_METHOD"] != "GET" or environ.get("PATH_INFO") != "/endpoint":
            return None
        kind = parse_qs(environ.get("QUERY_STRING", "")).get("endpointType", ["iot:Data"])[0]
        key = (region, kind)
        with self.store.lock:
            known = self.endpoints.get(key)
        if known is None:
            status_line, _, body = call_moto_json(self.moto_app, environ)
            if not status_line.startswith("200"):
                return None
            with self.store.lock:
                known = self.endpoints.setdefault(key, body)
        return 200, known

    def ops_answer(self, environ):
        """Injected faults, the fleet-operation routes, and moto's answers for dynamic groups."""
        path = environ.get("PATH_INFO", "")
        fault = None if path.startswith("/_shim/") else self.ops.take_fault(environ["REQUEST_METHOD"], path)
        if fault is not None:
            raise fault
        answer = ops_route(self.ops, environ) or self.stable_endpoint(environ)
        if answer is not None:
            return answer
        name, kind = dynamic_group_of_request(self.ops, environ)
        if kind == "membership":
            raise Reply(
                400,
                {"message": f"Cannot add or remove things of dynamic thing group {name}: its members follow its query"},
                "InvalidRequestException",
            )
        if kind == "describe":
            return 200, "moto-describe"
        return None

    def __call__(self, environ, start_response):
        headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))]
        try:
            answer = self.ops_answer(environ)
            if answer is None:
                answer = route(self.store, environ)
        except Reply as reply:
            answer = (reply.status, dict(reply.body, __type=reply.error_type))
            if reply.error_type:
                headers.append(("x-amzn-ErrorType", reply.error_type))
        if answer is None:
            if is_s3_list_parts(environ):
                return fix_list_parts(self.moto_app, environ, start_response)
            if is_s3_get_versioning(environ):
                return fix_list_parts(
                    self.moto_app, environ, start_response, b"GetBucketVersioningResponse", b"VersioningConfiguration"
                )
            return self.moto_app(environ, start_response)
        status, body = answer
        if body == "moto-describe":
            # A dynamic group: moto's DescribeThingGroup plus the dynamic fields AWS sends.
            status_line, _, described = call_moto_json(self.moto_app, environ)
            status = int(status_line.split()[0])
            if status == 200:
                name = described.get("thingGroupName")
                described.update(self.ops.dynamic_groups.get(name, {}), status="ACTIVE")
            body = described
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
