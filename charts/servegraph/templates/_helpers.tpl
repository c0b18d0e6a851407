{{/* The release's base name, at most 63 characters. */}}
{{- define "servegraph.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object the chart creates. */}}
{{- define "servegraph.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "servegraph.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: servegraph
{{- end -}}

{{/* The operator pod's labels, which its Deployment and Service select on. */}}
{{- define "servegraph.selectorLabels" -}}
app.kubernetes.io/name: servegraph-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "servegraph.serviceAccountName" -}}
{{- include "servegraph.fullname" . -}}
{{- end -}}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "servegraph.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The namespaces that get the graph pods' NetworkPolicies. */}}
{{- define "servegraph.networkPolicyNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/*
The operator's RBAC rules, read from rbac-rules.yaml (the one place they are written, which
the tests also read); values do not change them. Each rule's reason becomes its comment.
*/}}
{{- define "servegraph.rules" -}}
{{- $file := .Files.Get "rbac-rules.yaml" | fromYaml -}}
{{- if not $file.rules -}}
{{- fail "rbac-rules.yaml is missing from the chart or has no rules" -}}
{{- end -}}
{{- range $file.rules }}
  # {{ .reason }}
  - apiGroups: {{ toJson .apiGroups }}
    resources: {{ toJson .resources }}
    verbs: {{ toJson .verbs }}
{{- end -}}
{{- end -}}
