"""The AWS side of scripts/local-cloud: deploys a synthesized CDK stack into the emulator.

Runs with the emulator venv's Python (botocore comes with ministack). Subcommands:

  ready    ENDPOINT SECONDS        wait until the emulator answers its health check
  deploy   ENDPOINT STACK CDK_OUT  upload assets, create or update the stack, patch TTL;
                                   prints one JSON object (action, seconds, outputs)
  outputs  ENDPOINT STACK          the stack's outputs as JSON
  stacks   ENDPOINT                every stack: name, status, outputs (for `status`)

Every failure exits 1 with one line naming the stack, resource or file concerned.
"""

import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
import zipfile

import botocore.session
from botocore.exceptions import ClientError

REGION = "us-east-1"
ACCOUNT = "000000000000"
# The CDK default synthesizer's qualifier and the bootstrap version its templates require.
BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
BOOTSTRAP_VERSION = "30"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
DEPLOY_TIMEOUT_S = 300


class Failure(Exception):
    """A deploy step that failed, with the message to print."""


def client(endpoint, service):
    return botocore.session.get_session().create_client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def ready(endpoint, seconds):
    deadline = time.monotonic() + float(seconds)
    url = endpoint.rstrip("/") + "/_ministack/health"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise Failure(f"the emulator at {endpoint} did not answer {url} within {seconds} s")
        time.sleep(0.1)


def substitute(text):
    return text.replace("${AWS::AccountId}", ACCOUNT).replace("${AWS::Region}", REGION)


def zip_dir(path):
    """A zip of `path`'s files with their modes (bootstrap must stay executable). Level 1: a
    third of the default's time for a tenth more bytes, which only travel to 127.0.0.1."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for folder, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                full = os.path.join(folder, name)
                info = zipfile.ZipInfo(os.path.relpath(full, path), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (os.stat(full).st_mode & 0xFFFF) << 16
                with open(full, "rb") as f:
                    archive.writestr(info, f.read())
    return buffer.getvalue()


def bootstrap(endpoint, buckets):
    """What `cdk bootstrap` would have made: the asset buckets and the version parameter."""
    s3 = client(endpoint, "s3")
    for bucket in buckets:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)
    client(endpoint, "ssm").put_parameter(Name=BOOTSTRAP_PARAMETER, Value=BOOTSTRAP_VERSION, Type="String", Overwrite=True)


def upload_assets(endpoint, cdk_out, stack):
    """Uploads the file assets of `<stack>.assets.json` (zipped directories, or files as they
    are) unless an object of that key, which is the asset's content hash, is there already."""
    manifest_path = os.path.join(cdk_out, f"{stack}.assets.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"{manifest_path}: {e} (did the synth of stack {stack} run?)")
    uploads = []
    for asset_id, asset in manifest.get("files", {}).items():
        source = asset.get("source", {})
        for destination in asset.get("destinations", {}).values():
            uploads.append((asset_id, source, substitute(destination["bucketName"]), substitute(destination["objectKey"])))
    bootstrap(endpoint, sorted({bucket for _, _, bucket, _ in uploads}))
    s3 = client(endpoint, "s3")
    sent = 0
    for asset_id, source, bucket, key in uploads:
        try:
            s3.head_object(Bucket=bucket, Key=key)
            continue
        except ClientError:
            pass
        path = os.path.join(cdk_out, source.get("path", ""))
        if source.get("packaging") == "zip":
            body = zip_dir(path)
        else:
            with open(path, "rb") as f:
                body = f.read()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        sent += 1
    return sent


# CloudFormation's limit on an inline template body; larger ones go by TemplateURL, as the CDK
# CLI does (a stack of two pipelines is larger).
TEMPLATE_BODY_MAX_BYTES = 51200


def template_url(endpoint, cdk_out, stack):
    """The URL of the stack's template among the uploaded assets (the synth lists it as one),
    path-style under the emulator's endpoint."""
    with open(os.path.join(cdk_out, f"{stack}.assets.json")) as f:
        manifest = json.load(f)
    for asset in manifest.get("files", {}).values():
        if asset.get("source", {}).get("path") == f"{stack}.template.json":
            for destination in asset.get("destinations", {}).values():
                return f"{endpoint}/{substitute(destination['bucketName'])}/{substitute(destination['objectKey'])}"
    raise Failure(f"the template of stack {stack} is over {TEMPLATE_BODY_MAX_BYTES} bytes and not among its assets")


def describe(cfn, stack):
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as e:
        if "does not exist" in str(e):
            return None
        raise


def wait_for(cfn, stack, verb):
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while True:
        found = describe(cfn, stack)
        status = found["StackStatus"] if found else "DELETE_COMPLETE"
        if not status.endswith("_IN_PROGRESS"):
            return found, status
        if time.monotonic() >= deadline:
            raise Failure(f"stack {stack}: still {status} after {DEPLOY_TIMEOUT_S} s ({verb})")
        time.sleep(0.2)


def failure_events(cfn, stack):
    try:
        events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
    except ClientError:
        return ""
    lines = [
        f"  {e.get('LogicalResourceId')} ({e.get('ResourceType')}): {e.get('ResourceStatus')}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if e.get("ResourceStatus", "").endswith("FAILED")
    ]
    return "\n".join(lines[:20])


def create_or_update(cfn, stack, template):
    """Creates the stack, or updates it; returns "create", "update" or "none". `template` is
    {"TemplateBody": ...} or {"TemplateURL": ...}."""
    found = describe(cfn, stack)
    if found and found["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"):
        # A stack whose creation failed cannot be updated, on AWS either: start again.
        cfn.delete_stack(StackName=stack)
        wait_for(cfn, stack, "delete")
        found = None
    if found is None:
        cfn.create_stack(StackName=stack, Capabilities=CAPABILITIES, **template)
        action, good = "create", "CREATE_COMPLETE"
    else:
        try:
            cfn.update_stack(StackName=stack, Capabilities=CAPABILITIES, **template)
        except ClientError as e:
            if "No updates are to be performed" in str(e):
                return "none"
            raise
        action, good = "update", "UPDATE_COMPLETE"
    _, status = wait_for(cfn, stack, action)
    if status != good:
        raise Failure(f"stack {stack}: {action} ended {status}\n{failure_events(cfn, stack)}")
    return action


def patch_ttl(endpoint, cfn, stack, template):
    """The emulator ignores a table's TimeToLiveSpecification in a template: apply it with
    UpdateTimeToLive, as the template says. Returns the tables patched."""
    dynamodb = client(endpoint, "dynamodb")
    patched = []
    for logical_id, resource in json.loads(template).get("Resources", {}).items():
        spec = resource.get("Properties", {}).get("TimeToLiveSpecification")
        if resource.get("Type") != "AWS::DynamoDB::Table" or not spec or not spec.get("Enabled"):
            continue
        table = cfn.describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)["StackResourceDetail"]["PhysicalResourceId"]
        current = dynamodb.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and current.get("AttributeName") == spec["AttributeName"]:
            continue
        dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec["AttributeName"]})
        patched.append(f"{table}.{spec['AttributeName']}")
    return patched


def outputs_of(found):
    return {o["OutputKey"]: o["OutputValue"] for o in (found or {}).get("Outputs", [])}


def deploy(endpoint, stack, cdk_out):
    started = time.monotonic()
    template_path = os.path.join(cdk_out, f"{stack}.template.json")
    try:
        with open(template_path) as f:
            template = f.read()
    except OSError as e:
        raise Failure(f"{template_path}: {e} (did the synth of stack {stack} run?)")
    uploaded = upload_assets(endpoint, cdk_out, stack)
    uploaded_at = time.monotonic()
    cfn = client(endpoint, "cloudformation")
    if len(template.encode()) > TEMPLATE_BODY_MAX_BYTES:
        source = {"TemplateURL": template_url(endpoint, cdk_out, stack)}
    else:
        source = {"TemplateBody": template}
    action = create_or_update(cfn, stack, source)
    patched = patch_ttl(endpoint, cfn, stack, template)
    result = {
        "stack": stack,
        "action": action,
        "assets_uploaded": uploaded,
        "ttl_patched": patched,
        "seconds": round(time.monotonic() - started, 2),
        "upload_seconds": round(uploaded_at - started, 2),
        "outputs": outputs_of(describe(cfn, stack)),
    }
    print(json.dumps(result))


def outputs(endpoint, stack):
    found = describe(client(endpoint, "cloudformation"), stack)
    if found is None:
        raise Failure(f"stack {stack} does not exist in the emulator at {endpoint}")
    print(json.dumps(outputs_of(found)))


def stacks(endpoint):
    cfn = client(endpoint, "cloudformation")
    for summary in cfn.describe_stacks().get("Stacks", []):
        print(f"  stack {summary['StackName']}: {summary['StackStatus']}")
        for key, value in sorted(outputs_of(summary).items()):
            print(f"    {key} = {value}")


COMMANDS = {"ready": (ready, 2), "deploy": (deploy, 3), "outputs": (outputs, 2), "stacks": (stacks, 1)}


def main(argv):
    if len(argv) < 1 or argv[0] not in COMMANDS or len(argv) - 1 != COMMANDS[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]][0](*argv[1:])
    except Failure as e:
        print(f"local-cloud: {e}", file=sys.stderr)
        return 1
    except ClientError as e:
        print(f"local-cloud: {argv[0]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
