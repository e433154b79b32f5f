"""Splits rendered manifests: built-in kinds to PREFIX.builtin.yaml, the custom resources to
PREFIX.custom.json (one JSON document per line), the PrometheusRule groups to PREFIX.rules.yaml
(what promtool reads). Fails on a kind nothing validates."""

import json
import sys

import yaml

CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

src, prefix = sys.argv[1:3]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
builtin, custom, groups = [], [], []
for d in docs:
    key = (d["apiVersion"], d["kind"])
    if key in CUSTOM:
        custom.append(d)
        if d["kind"] == "PrometheusRule":
            groups.extend(d["spec"]["groups"])
    elif "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].startswith(
        ("apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/", "rbac.authorization.k8s.io/")
    ):
        sys.exit(f"{d['kind']} ({d['apiVersion']}): no schema checks this kind")
    else:
        builtin.append(d)
with open(f"{prefix}.builtin.yaml", "w") as f:
    yaml.safe_dump_all(builtin, f)
with open(f"{prefix}.custom.json", "w") as f:
    for d in custom:
        f.write(json.dumps(d) + "\n")
with open(f"{prefix}.rules.yaml", "w") as f:
    yaml.safe_dump({"groups": groups}, f)
