{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "sametag.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: fullnameOverride, else the release name
when it already contains the chart name, else <release>-<chart>.
*/}}
{{- define "sametag.fullname" -}}
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

{{- define "sametag.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard app.kubernetes.io labels on every object. */}}
{{- define "sametag.labels" -}}
helm.sh/chart: {{ include "sametag.chart" . }}
{{ include "sametag.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sametag
{{- end }}

{{/* Labels that select the operator pods (immutable in a Deployment). */}}
{{- define "sametag.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sametag.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "sametag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sametag.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sametag.webhookService" -}}
{{- printf "%s-webhook" (include "sametag.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sametag.certSecret" -}}
{{- default (printf "%s-webhook-tls" (include "sametag.fullname" .)) .Values.webhook.certSecret }}
{{- end }}

{{- define "sametag.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "sametag.sidecarImage" -}}
{{- default (printf "ghcr.io/sametag/sidecar:%s" .Chart.AppVersion) .Values.sidecarImage }}
{{- end }}

{{/* The watched namespaces as a JSON list: watchNamespaces plus the
deprecated watchNamespace; empty: every namespace. */}}
{{- define "sametag.watchNamespaces" -}}
{{- $all := concat (.Values.watchNamespaces | default list) (list .Values.watchNamespace) | compact | uniq }}
{{- toJson $all }}
{{- end }}

{{/* The cert-manager Certificate's name. */}}
{{- define "sametag.certificate" -}}
{{- printf "%s-webhook" (include "sametag.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the monitoring objects: the standard ones plus metrics.labels. */}}
{{- define "sametag.monitoringLabels" -}}
{{ include "sametag.labels" . }}
{{- with .Values.metrics.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
