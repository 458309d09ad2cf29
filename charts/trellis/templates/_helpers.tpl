{{/*
The operator's objects keep the names operator/rbac.yaml and the operator's
flag defaults use (ServiceAccount, webhook configurations, Secret, Lease):
one mesh per cluster.
*/}}
{{- define "trellis.name" -}}trellis-operator{{- end }}

{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trellis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trellis.labels" -}}
{{ include "trellis.selectorLabels" . }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "trellis.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}
