{{- define "shop.labels" -}}
app.kubernetes.io/part-of: trellis-shop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- /* The OTLP/gRPC endpoint the services export to; empty: none. */}}
{{- define "shop.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://jaeger.%s:4317" .Release.Namespace }}
{{- end }}
{{- end }}
