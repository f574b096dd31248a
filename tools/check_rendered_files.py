#!/usr/bin/env python3
"""Structural checks of rendered files that have no dedicated validator here.

- ServiceMonitor (a prometheus-operator CRD, absent from kubernetes-validate's
  core schemas): validated against a minimal JSON schema of the fields we
  render (selector labels, endpoints with port and path).
- compose.yaml: parses as YAML with merge keys; every service has an image,
  kit-service replicas have a healthcheck and nginx depends on each replica.
- fly.toml (TOML), railway.json, host.json, function.json (JSON), workflows
  (YAML with a job running `deploy-kit doctor ... --format sarif` and
  uploading it with github/codeql-action/upload-sarif).

Usage: check_rendered_files.py FILE ...   (exit 1 on any failure)
"""

import json
import sys
import tomllib

import jsonschema
import yaml

SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(s|m)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(s|m)$"},
                        },
                    },
                },
            },
        },
    },
}


def check_compose(document):
    services = document.get("services") or {}
    problems = [f"service `{n}` has no image" for n, s in services.items() if not s.get("image")]
    replicas = [n for n, s in services.items() if "KIT_SERVER_ID" in (s.get("environment") or {})]
    if not replicas:
        problems.append("no kit-service replicas")
    for name in replicas:
        if "healthcheck" not in services[name]:
            problems.append(f"replica `{name}` has no healthcheck")
        if name not in (services.get("nginx", {}).get("depends_on") or {}):
            problems.append(f"nginx does not depend on `{name}`")
    return problems


def check_workflow(document):
    steps = [step for job in document.get("jobs", {}).values() for step in job.get("steps", [])]
    runs = " ".join(str(step.get("run", "")) for step in steps)
    problems = []
    if "deploy-kit doctor --offline" not in runs or "--format sarif" not in runs:
        problems.append("no step runs `deploy-kit doctor --offline ... --format sarif`")
    if not any(str(step.get("uses", "")).startswith("github/codeql-action/upload-sarif") for step in steps):
        problems.append("no github/codeql-action/upload-sarif step")
    return problems


def check(path):
    name = path.rsplit("/", 1)[-1]
    with open(path, "rb") as file:
        data = file.read()
    if name.endswith(".toml"):
        tomllib.loads(data.decode())
        return "TOML", []
    if name.endswith(".json"):
        json.loads(data)
        return "JSON", []
    document = yaml.safe_load(data)
    if name == "compose.yaml":
        return "compose", check_compose(document)
    if "/.github/workflows/" in path:
        return "workflow", check_workflow(document)
    if document.get("kind") == "ServiceMonitor":
        errors = jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(document)
        return "ServiceMonitor (minimal schema)", [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    return "YAML", []


def main():
    failed = 0
    for path in sys.argv[1:]:
        try:
            kind, problems = check(path)
        except Exception as error:  # a parse error is a finding, not a crash
            kind, problems = "parse", [str(error)]
        if problems:
            failed += 1
            print(f"FAIL {path} ({kind})")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(f"ok   {path} ({kind})")
    sys.exit(1 if failed or len(sys.argv) < 2 else 0)


if __name__ == "__main__":
    main()
