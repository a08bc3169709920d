{{/* The release's full name: the release name, prefixed with the chart name unless it has it. */}}
{{- define "canaryml.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "canaryml.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "canaryml.labels" -}}
{{ include "canaryml.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: canaryml
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "canaryml.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "canaryml.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when image.digest is set (the bytes that were tested), else repository:tag. */}}
{{- define "canaryml.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Peering (one active replica among several) is on with more than one replica. */}}
{{- define "canaryml.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end -}}
{{- end -}}

{{/*
The operator's permissions, exactly the API calls it makes (tests/component/test_rbac.py
records them against the API emulator and compares). Namespaced rules only: cluster-wide they
go into a ClusterRole, otherwise into a Role in each watched namespace.
*/}}
{{- define "canaryml.rules" -}}
# The ModelDeployments: watched by kopf, read fresh before each reconcile, annotated (kopf's
# progress), and their status written (handled commands included).
- apiGroups: [canaryml.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [canaryml.dev]
  resources: [modeldeployments/status]
  verbs: [patch]
# The AnalysisTemplates named by analysis.templates, read at each analysis (no watch).
- apiGroups: [canaryml.dev]
  resources: [analysistemplates]
  verbs: [get]
# The children, each kind watched: the operator keeps them in memory (its children index) and
# reconciles on a hand edit of a Deployment or Service.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
# The builtin router's identity: a ServiceAccount and a Role that reads one ModelDeployment.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch]
# The gateway-api router's HTTPRoute.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [list, watch, create, patch, delete]
# A PodDisruptionBudget for each Deployment of more than one replica.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# A HorizontalPodAutoscaler for each autoscaled track and router (serving.autoscaling,
# routing.autoscaling).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# Each ModelDeployment's NetworkPolicies (networkPolicy.modelDeployments).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
# Prometheus credentials named by analysis.prometheus.*SecretRef.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events explaining every decision.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/*
The cluster-scoped reads: the ClusterAnalysisTemplates named by analysis.templates, read at each
analysis (no watch). In the ClusterRole, or in a ClusterRole of their own with watchNamespaces.
*/}}
{{- define "canaryml.clusterTemplateRules" -}}
- apiGroups: [canaryml.dev]
  resources: [clusteranalysistemplates]
  verbs: [get]
{{- end -}}
