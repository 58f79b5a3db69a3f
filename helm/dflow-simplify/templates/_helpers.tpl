{{/* Names shared by the templates. */}}
{{- define "simplify.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "simplify.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "simplify.minioName" -}}
{{- printf "%s-minio" (include "simplify.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret with the S3 keys: the user's own, or the one this chart creates. */}}
{{- define "simplify.s3Secret" -}}
{{- .Values.s3.existingSecret | default (printf "%s-s3" (include "simplify.fullname" .)) -}}
{{- end -}}

{{/* host:port of the S3 endpoint as the pods reach it. */}}
{{- define "simplify.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc:9000" (include "simplify.minioName" .) .Release.Namespace -}}
{{- else -}}
{{- required "s3.endpoint is required when minio.enabled is false" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The artifact repository entry (Argo's S3ArtifactRepository); dflow_s3_config.repo repeats it. */}}
{{- define "simplify.repository" -}}
s3:
  bucket: {{ .Values.s3.bucket }}
  endpoint: {{ include "simplify.s3Endpoint" . }}
  insecure: {{ .Values.s3.insecure }}
  {{- with .Values.s3.region }}
  region: {{ . }}
  {{- end }}
  keyFormat: {{ printf "%s{{workflow.name}}/{{pod.name}}" .Values.s3.prefix | quote }}
  accessKeySecret:
    name: {{ include "simplify.s3Secret" . }}
    key: accesskey
  secretKeySecret:
    name: {{ include "simplify.s3Secret" . }}
    key: secretkey
{{- end -}}
