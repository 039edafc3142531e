// Validates ArgoCD custom resources against @kubernetes-models/argo-cd (the CRDs' OpenAPI schemas).
// Input: a JSON array of objects on stdin. Output: one JSON line per object, {kind, name, ok, error}.
// Exit status 1 when any object fails, including an object of a kind this script does not know.
import { Application, AppProject } from "@kubernetes-models/argo-cd/argoproj.io/v1alpha1";

const MODELS = {
  "argoproj.io/v1alpha1/Application": Application,
  "argoproj.io/v1alpha1/AppProject": AppProject,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const documents = JSON.parse(input);
let failed = 0;
for (const doc of documents) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const name = doc.metadata?.name ?? null;
  const Model = MODELS[key];
  let error = null;
  if (!Model) {
    error = `unknown kind ${key}: no ArgoCD model for it`;
  } else {
    try {
      new Model(doc).validate();
    } catch (e) {
      error = e.message;
    }
  }
  if (error) failed += 1;
  console.log(JSON.stringify({ kind: doc.kind, name, ok: error === null, error }));
}
process.exit(failed ? 1 : 0);
