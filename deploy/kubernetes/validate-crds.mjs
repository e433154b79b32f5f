// Validates custom resources (one JSON document per line on stdin) against KEDA's and the
// Prometheus Operator's CRD schemas, as @kubernetes-models packages them. Usage:
//   node validate-crds.mjs <dir holding node_modules> < objects.jsonl
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = path.join(process.argv[2], "node_modules");
const load = (pkg) => import(pathToFileURL(path.join(root, pkg, "index.js")).href);
const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1");
const prom = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const models = {
  ScaledObject: keda.ScaledObject,
  TriggerAuthentication: keda.TriggerAuthentication,
  ServiceMonitor: prom.ServiceMonitor,
  PrometheusRule: prom.PrometheusRule,
};
let failed = 0;
const counts = {};
for (const line of readFileSync(0, "utf8").split("\n").filter(Boolean)) {
  const obj = JSON.parse(line);
  const Model = models[obj.kind];
  const name = `${obj.kind}/${obj.metadata.name}`;
  if (!Model) {
    console.error(`${name}: no schema for this kind`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    counts[obj.kind] = (counts[obj.kind] || 0) + 1;
  } catch (e) {
    const why = (e.errors || []).map((x) => `${x.instancePath} ${x.message}`).join("; ");
    console.error(`${name}: ${why || e.message}`);
    failed++;
  }
}
if (failed) process.exit(1);
console.log("custom resources valid:", JSON.stringify(counts));
