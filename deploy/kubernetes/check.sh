#!/usr/bin/env bash
# Validates the manifests offline (the test suite runs this; deploy/local/setup.sh installs the
# tools into .vtx):
#   1. `kubectl kustomize` renders every overlay;
#   2. every built-in object validates against the Kubernetes 1.33 schemas (kubernetes-validate,
#      strict: unknown fields are errors), and no object is of a kind nobody checks;
#   3. ScaledObjects, TriggerAuthentications, ServiceMonitors and PrometheusRules validate
#      against KEDA's and the Prometheus Operator's CRD schemas (@kubernetes-models);
#   4. the alert rules pass `promtool check rules`, and its unit tests (rules-test.yaml) pass.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="$here/../../.vtx"
kubectl="$state/bin/kubectl"
py="$state/py/bin/python"
promtool="$state/prometheus/usr/bin/promtool"
for tool in "$kubectl" "$py" "$promtool" "$state/py/bin/kubernetes-validate"; do
  [ -x "$tool" ] || { echo "missing $tool: run deploy/local/setup.sh" >&2; exit 2; }
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in "$here"/overlays/*/; do
  name="$(basename "$overlay")"
  "$kubectl" kustomize "$overlay" > "$out/$name.yaml"
  echo "$name: rendered $(grep -c '^kind:' "$out/$name.yaml") objects"
  # Built-in kinds against the Kubernetes schemas; the custom ones are split off for step 3.
  "$py" "$here/split.py" "$out/$name.yaml" "$out/$name"
  "$state/py/bin/kubernetes-validate" -k 1.33 --strict --quiet "$out/$name.builtin.yaml"
  echo "$name: built-in objects valid (Kubernetes 1.33, strict)"
  NODE_PATH="$state/k8s/node_modules" node "$here/validate-crds.mjs" "$state/k8s" \
    < "$out/$name.custom.json"
  "$promtool" check rules "$out/$name.rules.yaml"
done
cp "$out/small.rules.yaml" "$out/rules.yaml"
cp "$here/rules-test.yaml" "$out/"
"$promtool" test rules "$out/rules-test.yaml"
