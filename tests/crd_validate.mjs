// Validates custom resources against their CRD's schema, as compiled by @kubernetes-models (tests/charttools.py).
// argv[2]: the node_modules prefix; stdin: a JSON list of objects. Prints a JSON list of [kind, name, error|null].
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const prefix = process.argv[2];
const models = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.mjs",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.mjs",
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
  "monitoring.coreos.com/v1alpha1/ScrapeConfig": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1/ScrapeConfig.js",
};
const out = [];
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const file = models[key];
  if (!file) {
    out.push([obj.kind, obj.metadata?.name, `no CRD schema for ${key}`]);
    continue;
  }
  const module = await import(pathToFileURL(`${prefix}/node_modules/${file}`).href);
  try {
    new module[obj.kind](obj).validate();
    out.push([obj.kind, obj.metadata?.name, null]);
  } catch (error) {
    out.push([obj.kind, obj.metadata?.name, String(error.message ?? error)]);
  }
}
console.log(JSON.stringify(out));
