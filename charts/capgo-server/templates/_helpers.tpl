{{- define "capgo-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capgo-server.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "capgo-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capgo-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capgo-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "capgo-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "capgo-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capgo-server.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The chart's own Secret (inline tokens and credentials), when any inline value is set. */}}
{{- define "capgo-server.ownSecretName" -}}
{{- include "capgo-server.fullname" . }}-secrets
{{- end -}}

{{- define "capgo-server.hasOwnSecret" -}}
{{- if or (and (not .Values.auth.existingSecret) .Values.auth.managementApiTokens) (and (eq .Values.storage.mode "external") (not .Values.storage.mongo.existingSecret) .Values.storage.mongo.connectionString) (and (eq .Values.storage.mode "external") (not .Values.storage.s3.existingSecret) .Values.storage.s3.accessKeyId) -}}
true
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches: the listed ones, else the release namespace. */}}
{{- define "capgo-server.watchedNamespaces" -}}
{{- if .Values.controller.namespaces -}}
{{- join "," .Values.controller.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Refuses settings that cannot work. */}}
{{- define "capgo-server.validate" -}}
{{- if and (eq .Values.storage.mode "embedded") (gt (int .Values.replicaCount) 1) -}}
{{- fail "replicaCount > 1 needs storage.mode=external (MongoDB + S3): the embedded store is one SQLite file on one volume and is locked by a single process" -}}
{{- end -}}
{{- if eq .Values.storage.mode "external" -}}
{{- if not (or .Values.storage.mongo.existingSecret .Values.storage.mongo.connectionString) -}}
{{- fail "storage.mode=external needs storage.mongo.existingSecret or storage.mongo.connectionString" -}}
{{- end -}}
{{- if not .Values.storage.s3.bucket -}}
{{- fail "storage.mode=external needs storage.s3.bucket" -}}
{{- end -}}
{{- end -}}
{{- end -}}
