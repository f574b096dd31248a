#!/usr/bin/env python3
"""Validates Pulumi YAML programs rendered by `deploy-kit render`.

For each program directory (holding Pulumi.yaml and its stack file) it parses
the program with pulumi-rs-yaml (PyPI `pulumi-rs-yaml`, module
`pulumi_yaml_rs`) and requires:

- zero diagnostics from `parse_template`, `validate_and_classify` and
  `create_execution_plan` (YAML, references, cycles);
- the resources deploy-kit promises, found by type token: a bucket (S3, GCS
  or an Azure storage account) with its lifecycle (an S3 lifecycle resource
  with expiration on the service prefix and an abort of incomplete multipart
  uploads, GCS `lifecycleRules` with Delete + AbortIncompleteMultipartUpload,
  or an Azure management policy), at least one secret whose value comes from a
  Pulumi config key declared `secret: true` (or another resource's output),
  never a literal, and the service (Lambda function, Cloud Run service,
  function app, or the Kubernetes ConfigGroup);
- dependencies from the execution plan's graph: the service depends,
  directly or transitively, on every secret value and on the bucket's
  lifecycle, so nothing serves before its storage rules and keys exist.

Usage: check_pulumi.py DIR [DIR ...]   (exit 1 on any failure; prints a line
per program). `--no-storage DIR` skips the bucket requirements for DIR.
"""

import argparse
import sys

import pulumi_yaml_rs as pulumi

SERVICE_TYPES = {
    "aws:lambda/function:Function",
    "gcp:cloudrunv2/service:Service",
    "azure-native:web/webApp:WebApp",
    "kubernetes:yaml/v2:ConfigGroup",
}
BUCKET_TYPES = {
    "aws:s3/bucketV2:BucketV2",
    "gcp:storage/bucket:Bucket",
    "azure-native:storage/storageAccount:StorageAccount",
}
LIFECYCLE_TYPES = {
    "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2",
    "azure-native:storage/managementPolicy:ManagementPolicy",
}
# Resource type -> the property path holding the secret value.
SECRET_VALUE_PROPERTIES = {
    "aws:secretsmanager/secretVersion:SecretVersion": ["secretString"],
    "gcp:secretmanager/secretVersion:SecretVersion": ["secretData"],
    "azure-native:keyvault/secret:Secret": ["properties", "value"],
    "kubernetes:core/v1:Secret": ["stringData", "*"],
}


def plain(value):
    """The plan's tagged values ({"t": ...}) as plain Python, symbols as ('sym', path)."""
    kind = value.get("t")
    if kind == "obj":
        return {plain(e["k"]): plain(e["v"]) for e in value["entries"]}
    if kind == "list":
        return [plain(item) for item in value["items"]]
    if kind == "sym":
        return ("sym", tuple(part.get("v") for part in value["a"]))
    if "arg" in value:  # a builtin such as fn::fromBase64, tagged by its name
        return ("fn", kind, plain(value["arg"]))
    if kind in ("string", "int", "float", "bool", "number", "null"):
        return value.get("v")
    return ("other", kind)


def properties(node):
    return {entry["k"]: plain(entry["v"]) for entry in node.get("properties", [])}


def dig(value, path):
    """Values at `path` (`*` = every map value)."""
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if not isinstance(value, dict):
        return []
    if head == "*":
        return [found for v in value.values() for found in dig(v, rest)]
    return dig(value[head], rest) if head in value else []


def closure(dependencies, name):
    seen, stack = set(), [name]
    while stack:
        for dependency in dependencies.get(stack.pop(), []):
            if dependency not in seen:
                seen.add(dependency)
                stack.append(dependency)
    return seen


def check(directory, storage=True):
    problems = []
    with open(f"{directory}/Pulumi.yaml", encoding="utf-8") as file:
        parsed = pulumi.parse_template(file.read())
    problems += [f"parse: {d['message']}" for d in parsed["diagnostics"]]
    problems += [f"validate: {d['message']}" for d in pulumi.validate_and_classify(directory)]
    try:
        plan = pulumi.create_execution_plan(directory)
    except ValueError as error:
        return problems + [f"plan: {error}"], {}
    problems += [f"plan: {d['message']}" for d in plan["diagnostics"]]
    nodes = {node["name"]: node for node in plan["nodes"]}
    resources = {n: node for n, node in nodes.items() if node["kind"] == "resource"}
    secret_config = {n for n, node in nodes.items() if node["kind"] == "config" and node.get("secret")}
    dependencies = plan["dependencies"]
    by_type = lambda types: sorted(n for n, node in resources.items() if node["type_token"] in types)

    services = by_type(SERVICE_TYPES)
    if len(services) != 1:
        problems.append(f"expected one service resource, found {services or 'none'}")
    service_needs = closure(dependencies, services[0]) if services else set()

    buckets = by_type(BUCKET_TYPES)
    if storage:
        if not buckets:
            problems.append("no bucket (S3, GCS or Azure storage account)")
        for bucket in buckets:
            node = resources[bucket]
            lifecycle = [n for n in by_type(LIFECYCLE_TYPES) if bucket in closure(dependencies, n)]
            if node["type_token"] == "gcp:storage/bucket:Bucket":
                rules = properties(node).get("lifecycleRules", [])
                actions = {dig(rule, ["action", "type"])[0] for rule in rules if dig(rule, ["action", "type"])}
                if not {"Delete", "AbortIncompleteMultipartUpload"} <= actions:
                    problems.append(f"bucket `{bucket}` lifecycleRules lack Delete and AbortIncompleteMultipartUpload ({sorted(actions)})")
                if not any(dig(rule, ["condition", "matchesPrefixes"]) for rule in rules):
                    problems.append(f"bucket `{bucket}` Delete rule is not limited to the service prefix")
                lifecycle_name = bucket
            elif not lifecycle:
                problems.append(f"bucket `{bucket}` has no lifecycle resource depending on it")
                continue
            else:
                lifecycle_name = lifecycle[0]
                rules = properties(resources[lifecycle_name])
                if resources[lifecycle_name]["type_token"].startswith("aws:"):
                    kinds = {key for rule in rules.get("rules", []) for key in rule}
                    if not {"expiration", "abortIncompleteMultipartUpload"} <= kinds:
                        problems.append(f"`{lifecycle_name}` lacks expiration or abortIncompleteMultipartUpload ({sorted(kinds)})")
                    if not all(dig(rule, ["filter", "prefix"]) for rule in rules.get("rules", [])):
                        problems.append(f"`{lifecycle_name}` rules are not limited to the service prefix")
            if services and lifecycle_name not in service_needs:
                problems.append(f"service `{services[0]}` does not depend on `{lifecycle_name}`")

    holders = []
    for name, node in resources.items():
        path = SECRET_VALUE_PROPERTIES.get(node["type_token"])
        if path is None:
            continue
        holders.append(name)
        for value in dig(properties(node), path):
            while isinstance(value, tuple) and value[0] == "fn":
                value = value[2]
            if isinstance(value, tuple) and value[0] == "sym":
                root = value[1][0]
                if root in resources:
                    continue
                if root not in secret_config:
                    problems.append(f"secret `{name}` takes its value from `{root}`, which is not a `secret: true` config key")
            else:
                problems.append(f"secret `{name}` has a literal value")
        if services and name not in service_needs:
            problems.append(f"service `{services[0]}` does not depend on secret `{name}`")
    if not holders:
        problems.append("no secret resource (values from Pulumi config secrets)")
    summary = {
        "service": services[0] if services else None,
        "buckets": buckets,
        "secrets": sorted(holders),
        "resources": len(resources),
    }
    return problems, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="*", metavar="DIR")
    parser.add_argument("--no-storage", action="append", default=[], metavar="DIR")
    args = parser.parse_args()
    failed = 0
    for directory in args.directories + args.no_storage:
        problems, summary = check(directory, storage=directory not in args.no_storage)
        if problems:
            failed += 1
            print(f"FAIL {directory}")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(
                f"ok   {directory}: {summary['resources']} resources, 0 diagnostics; service "
                f"`{summary['service']}` depends on buckets {summary['buckets']} (with lifecycle) "
                f"and secrets {summary['secrets']}"
            )
    if not args.directories and not args.no_storage:
        parser.error("no program directories given")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
