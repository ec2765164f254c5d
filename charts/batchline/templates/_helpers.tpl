{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "batchline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource: the release name, plus the chart name unless it holds it. */}}
{{- define "batchline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "batchline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batchline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "batchline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "batchline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: batchline
{{- end }}

{{/* Labels a Prometheus selects monitors and rules by: monitoring.labels, then the object's own
additionalLabels (which win). Called with (dict "root" $ "extra" <map>); renders nothing when both are empty. */}}
{{- define "batchline.monitorLabels" -}}
{{- $labels := merge (deepCopy (default (dict) .extra)) (default (dict) .root.Values.monitoring.labels) }}
{{- with $labels }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* workloadImagePullSecrets as the comma-separated names the operator reads. */}}
{{- define "batchline.workloadPullSecretNames" -}}
{{- $names := list }}
{{- range .Values.workloadImagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{- define "batchline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "batchline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "batchline.peeringName" -}}
{{- default (include "batchline.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "batchline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True ("true") in namespaces mode, empty otherwise. */}}
{{- define "batchline.namespaced" -}}
{{- if eq .Values.operator.watch.mode "namespaces" }}
{{- if not .Values.operator.watch.namespaces }}
{{- fail "operator.watch.namespaces must list at least one namespace in namespaces mode" }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{/* Namespaces that get a model-cache claim, as a JSON list. */}}
{{- define "batchline.modelCacheNamespaces" -}}
{{- if .Values.modelCache.namespaces }}
{{- toJson .Values.modelCache.namespaces }}
{{- else if include "batchline.namespaced" . }}
{{- toJson .Values.operator.watch.namespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it watches. Every rule is used (tests/chart/test_rbac.py
compares them with an operator run's audit log and kopf's watches):
- list/watch: kopf's indexes and handlers (handlers.py) watch these kinds;
- patch: server-side apply of the children, status on llmdeployments/status (nothing else on an
  LLMDeployment: no finalizer, no annotations);
- create: server-side apply of a child that does not exist yet is authorized as create too;
  kopf posts Events (core v1).
*/}}
{{- define "batchline.namespacedRules" -}}
- apiGroups: [batchline.dev]
  resources: [llmdeployments]
  verbs: [list, watch]
- apiGroups: [batchline.dev]
  resources: [llmdeployments/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [list, watch, create, patch]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Model builds and cache clean-up run as Jobs; the cache catalogue is a ConfigMap beside the cache claim.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [{{ .Values.modelCache.name | quote }}]
  verbs: [patch]
{{- end }}

{{/* Cluster-scoped reads: GPU nodes (feasibility) and CRDs (kopf notices kinds that appear later). */}}
{{- define "batchline.clusterReadRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* kopf peering: every replica lists and watches the peering objects and patches its keep-alive into ours.
Called with (dict "root" $ "resource" "clusterkopfpeerings" or "kopfpeerings") when peering is on. */}}
{{- define "batchline.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  resourceNames: [{{ include "batchline.peeringName" .root | quote }}]
  verbs: [patch]
{{- end }}
