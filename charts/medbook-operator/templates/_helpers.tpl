{{/* The chart's name, bounded to 63 characters. */}}
{{- define "medbook-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-<chart>, or the release name when it holds the chart's. */}}
{{- define "medbook-operator.fullname" -}}
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

{{- define "medbook-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "medbook-operator.labels" -}}
helm.sh/chart: {{ include "medbook-operator.chart" . }}
{{ include "medbook-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: medbook
{{- end }}

{{/* Selector labels: name and instance only (they never change across upgrades). */}}
{{- define "medbook-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medbook-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "medbook-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "medbook-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "medbook-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "medbook-operator.cleanupImage" -}}
{{- printf "%s:%s" .Values.cleanup.image.repository (default .Chart.AppVersion .Values.cleanup.image.tag) }}
{{- end }}

{{/*
The operator container's environment (medbook_operator.settings.OperatorSettings),
for the Deployment to include with `include "medbook-operator.env" . | nindent 12`.
*/}}
{{- define "medbook-operator.env" -}}
- name: MEDBOOK_OPERATOR_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: MEDBOOK_OPERATOR_STATUS_INTERVAL
  value: {{ .Values.operator.statusInterval | quote }}
- name: MEDBOOK_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: MEDBOOK_OPERATOR_LIVENESS
  value: {{ printf "http://0.0.0.0:%v/healthz" .Values.operator.livenessPort | quote }}
- name: MEDBOOK_OPERATOR_PEERING
  value: {{ ternary .Values.peering.name "" .Values.peering.enabled | quote }}
- name: MEDBOOK_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: MEDBOOK_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
{{- with .Values.redis.host }}
- name: REDIS_HOST
  value: {{ . | quote }}
{{- end }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: MEDBOOK_CLEANUP_IMAGE
  value: {{ include "medbook-operator.cleanupImage" . | quote }}
- name: MEDBOOK_CLEANUP_IMAGE_PULL_POLICY
  value: {{ .Values.cleanup.image.pullPolicy | quote }}
{{- with .Values.imagePullSecrets }}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
- name: MEDBOOK_CLEANUP_IMAGE_PULL_SECRETS
  value: {{ join "," $names | quote }}
{{- end }}
- name: MEDBOOK_CLEANUP_ENV_SECRET
  value: {{ .Values.database.existingSecret | quote }}
- name: MEDBOOK_CLEANUP_ENV_CONFIGMAP
  value: {{ .Values.database.configMap | quote }}
- name: MEDBOOK_CLEANUP_SERVICE_ACCOUNT
  value: {{ .Values.cleanup.serviceAccountName | quote }}
- name: MEDBOOK_CLEANUP_RUN_AS_USER
  value: {{ .Values.cleanup.runAsUser | quote }}
- name: MEDBOOK_CLEANUP_ACTIVE_DEADLINE
  value: {{ .Values.cleanup.activeDeadlineSeconds | quote }}
- name: MEDBOOK_CLEANUP_STARTING_DEADLINE
  value: {{ .Values.cleanup.startingDeadlineSeconds | quote }}
- name: MEDBOOK_CLEANUP_RESOURCES
  value: {{ .Values.cleanup.resources | toJson | quote }}
{{- end }}

{{/*
checkov findings that remain on purpose, suppressed in place with their reason
(annotations "checkov.io/skipN: <check>=<reason>"), for the operator's Deployment.
*/}}
{{- define "medbook-operator.checkov" -}}
{{- $checks := list "CKV_K8S_38" }}
{{- if ne .Values.image.pullPolicy "Always" }}{{ $checks = append $checks "CKV_K8S_15" }}{{ end }}
{{- if not (contains "@sha256:" (include "medbook-operator.image" .)) }}{{ $checks = append $checks "CKV_K8S_43" }}{{ end }}
{{- if .Values.redis.existingSecret }}{{ $checks = append $checks "CKV_K8S_35" }}{{ end }}
{{- $reasons := dict
  "CKV_K8S_38" "the operator calls the Kubernetes API with its ServiceAccount token (RBAC: the Role in rbac.yaml)"
  "CKV_K8S_15" "the pull policy is a value (image.pullPolicy): IfNotPresent suits immutable release tags and images loaded into kind"
  "CKV_K8S_43" "the tag is a value: skaffold deploys tag@digest, and image.tag may be tag@sha256:... in production"
  "CKV_K8S_35" "the operator reads its settings from environment variables only (medbook_operator.settings)"
}}
{{- range $i, $id := $checks }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (index $reasons $id) | quote }}
{{- end }}
{{- end }}

{{/*
The uninstall hook's pods and objects: the operator's part-of and component (so the apps'
Redis NetworkPolicy admits them) under a name of their own, so that the operator's
Deployment, NetworkPolicy and PodMonitor never select them.
*/}}
{{- define "medbook-operator.uninstallSelectorLabels" -}}
app.kubernetes.io/name: {{ include "medbook-operator.name" . | trunc 53 | trimSuffix "-" }}-uninstall
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "medbook-operator.uninstallLabels" -}}
helm.sh/chart: {{ include "medbook-operator.chart" . }}
{{ include "medbook-operator.uninstallSelectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: medbook
{{- end }}

{{/* A pre-delete hook of the given weight, gone once every hook of the uninstall succeeded. */}}
{{- define "medbook-operator.uninstallHook" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}

{{/* Where the operator's pods (and the uninstall hook's) may connect: DNS, the API, Redis. */}}
{{- define "medbook-operator.egress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    {{- toYaml $np.dns | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- ports:
    {{- range $np.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with $np.apiServer.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    - {protocol: TCP, port: {{ .Values.redis.port }}}
  {{- with $np.redisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
