{{- define "shop.labels" -}}
app.kubernetes.io/part-of: trellis-shop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- /* Selector labels of one of the chart's own workloads: (dict "ctx" $ "name" NAME). */}}
{{- define "shop.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end }}

{{- define "shop.workloadLabels" -}}
{{ include "shop.labels" .ctx }}
app.kubernetes.io/name: {{ .name }}
{{- end }}

{{- /*
A generated secret that survives upgrades: the value stored under KEY in the
release's Secret NAME when it exists, else a fresh random one.
(dict "ctx" $ "secret" NAME "key" KEY)
*/}}
{{- define "shop.keptSecret" -}}
{{- $s := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if and $s $s.data (hasKey $s.data .key) }}
{{- index $s.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

{{- define "shop.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{- /* The hardening every container of the chart gets. */}}
{{- define "shop.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
{{- end }}

{{- /* The OTLP/gRPC endpoint the services export to; empty: none. */}}
{{- define "shop.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://jaeger.%s:4317" .Release.Namespace }}
{{- end }}
{{- end }}
