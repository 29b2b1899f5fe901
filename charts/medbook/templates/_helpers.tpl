{{/* The chart's name, bounded to 63 characters. */}}
{{- define "medbook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-<chart>, or the release name when it holds the chart's. */}}
{{- define "medbook.fullname" -}}
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

{{/*
A component's object name, "<fullname>-<component>", at most 63 characters: the full
name is shortened, never the component, so two components never share a name.
Call with (list . "booking"), or (list . "postgresql" 52) for a StatefulSet (its pods'
controller-revision-hash label adds 11 characters to the name).
*/}}
{{- define "medbook.componentName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $limit := 63 }}
{{- if gt (len .) 2 }}{{ $limit = index . 2 }}{{ end }}
{{- $base := include "medbook.fullname" $ctx | trunc (int (sub (sub $limit (len $component)) 1)) | trimSuffix "-" }}
{{- printf "%s-%s" $base $component }}
{{- end }}

{{- define "medbook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name, instance and component (they never change across upgrades). */}}
{{- define "medbook.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "medbook.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels on every object of a component: (list . "booking"). */}}
{{- define "medbook.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "medbook.chart" $ctx }}
{{ include "medbook.selectorLabels" . }}
{{- if $ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: medbook
{{- end }}

{{/* An app image: (list . .Values.booking.image). */}}
{{- define "medbook.image" -}}
{{- $ctx := index . 0 }}
{{- $image := index . 1 }}
{{- $repository := $image.repository }}
{{- with $ctx.Values.image.registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end }}
{{- printf "%s:%s" $repository (default (default $ctx.Chart.AppVersion $ctx.Values.image.tag) $image.tag) }}
{{- end }}

{{- define "medbook.serviceAccountName" -}}
{{- $ctx := index . 0 }}
{{- if $ctx.Values.serviceAccount.create }}
{{- include "medbook.componentName" . }}
{{- else }}default{{ end }}
{{- end }}

{{/* ---- Where PostgreSQL, Redis and RabbitMQ are ------------------------------------ */}}

{{- define "medbook.postgresql.host" -}}
{{- if .Values.postgresql.enabled }}{{ include "medbook.componentName" (list . "postgresql" 52) }}
{{- else if .Values.postgresql.external.hosts }}{{ first .Values.postgresql.external.hosts | splitList ":" | first }}
{{- else }}{{ required "postgresql.external.host (or .hosts) is required when postgresql.enabled is false" .Values.postgresql.external.host }}{{ end }}
{{- end }}

{{/* Every server of an external primary + standbys set, comma-separated, or nothing. */}}
{{- define "medbook.postgresql.hosts" -}}
{{- if not .Values.postgresql.enabled }}{{ join "," .Values.postgresql.external.hosts }}{{ end }}
{{- end }}

{{- define "medbook.postgresql.port" -}}
{{- if .Values.postgresql.enabled }}5432{{ else }}{{ .Values.postgresql.external.port }}{{ end }}
{{- end }}

{{- define "medbook.postgresql.secret" -}}
{{- if .Values.postgresql.enabled }}{{ include "medbook.componentName" (list . "postgresql" 52) }}
{{- else }}{{ required "postgresql.external.existingSecret (with the key DB_PASSWORD) is required when postgresql.enabled is false" .Values.postgresql.external.existingSecret }}{{ end }}
{{- end }}

{{- define "medbook.redis.host" -}}
{{- if .Values.redis.enabled }}{{ include "medbook.componentName" (list . "redis" 52) }}
{{- else if .Values.redis.external.sentinel.hosts }}{{ first .Values.redis.external.sentinel.hosts | splitList ":" | first }}
{{- else }}{{ required "redis.external.host (or .sentinel.hosts) is required when redis.enabled is false" .Values.redis.external.host }}{{ end }}
{{- end }}

{{/* The Redis Sentinels of an external Redis, comma-separated, or nothing. */}}
{{- define "medbook.redis.sentinels" -}}
{{- if not .Values.redis.enabled }}{{ join "," .Values.redis.external.sentinel.hosts }}{{ end }}
{{- end }}

{{- define "medbook.redis.port" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.redis.external.port }}{{ end }}
{{- end }}

{{/* The Secret holding REDIS_PASSWORD, or nothing (an external Redis without a password). */}}
{{- define "medbook.redis.secret" -}}
{{- if .Values.redis.enabled }}{{ include "medbook.componentName" (list . "redis" 52) }}
{{- else }}{{ .Values.redis.external.existingSecret }}{{ end }}
{{- end }}

{{- define "medbook.rabbitmq.host" -}}
{{- include "medbook.componentName" (list . "rabbitmq" 52) }}
{{- end }}

{{- define "medbook.rabbitmq.port" -}}
{{- if .Values.rabbitmq.enabled }}5672{{ else }}{{ .Values.rabbitmq.external.port }}{{ end }}
{{- end }}

{{- define "medbook.rabbitmq.secret" -}}
{{- if .Values.rabbitmq.enabled }}{{ include "medbook.componentName" (list . "rabbitmq" 52) }}
{{- else }}{{ required "rabbitmq.external.existingSecret (with the key MEDBOOK_RABBITMQ_URL) is required when rabbitmq.enabled is false" .Values.rabbitmq.external.existingSecret }}{{ end }}
{{- end }}

{{- define "medbook.apiTokenSecret" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}
{{- else if .Values.auth.apiToken }}{{ include "medbook.componentName" (list . "api-token") }}
{{- end }}
{{- end }}

{{/*
A generated credential of an in-chart server: the value given in values, else the one in
the release's Secret (kept across upgrades, and across uninstall and install: the Secret
has helm.sh/resource-policy: keep, like the server's PersistentVolumeClaim), else a new
random one. Refuses to render when the server's kept data was initialised with a
credential this release cannot know, or that differs from the one given: PostgreSQL and
RabbitMQ take their credential only when they initialise their data.
Call with (list . "postgresql" "DB_PASSWORD" <given> <bound to the data>).
*/}}
{{- define "medbook.generatedSecret" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $key := index . 2 }}
{{- $given := index . 3 }}
{{- $bound := index . 4 }}
{{- $name := include "medbook.componentName" (list $ctx $component 52) }}
{{- $kept := lookup "v1" "Secret" $ctx.Release.Namespace $name }}
{{- $old := "" }}
{{- if and $kept $kept.data (hasKey $kept.data $key) }}{{ $old = index $kept.data $key | b64dec }}{{ end }}
{{- $claim := printf "data-%s-0" $name }}
{{- $data := and $bound (index $ctx.Values $component).persistence.enabled (lookup "v1" "PersistentVolumeClaim" $ctx.Release.Namespace $claim) }}
{{- $wipe := printf "kubectl -n %s delete pvc %s" $ctx.Release.Namespace $claim }}
{{- if and $data $given $old (ne $given $old) }}
{{- fail (printf "%s.auth.password differs from the password in the Secret %s, with which the data in the PersistentVolumeClaim %s was initialised: %s would keep the old one and refuse the new. Change it in the server first, or delete the old data (%s)." $component $name $claim $component $wipe) }}
{{- end }}
{{- if and $data (not $given) (not $old) }}
{{- fail (printf "the PersistentVolumeClaim %s holds %s data initialised with a password this release cannot know: the Secret %s that kept it is gone. Give that password (--set %s.auth.password=...), or delete the old data (%s)." $claim $component $name $component $wipe) }}
{{- end }}
{{- $given | default $old | default (randAlphaNum 32) }}
{{- end }}

{{- define "medbook.infraPassword" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $bound := ne $component "redis" }}{{/* Redis takes its password at every start */}}
{{- include "medbook.generatedSecret" (list $ctx $component (index . 2) (index $ctx.Values $component).auth.password $bound) }}
{{- end }}

{{/*
The annotations of a server's generated Secret: it outlives the release as long as the
server's data does (a PersistentVolumeClaim the uninstall leaves). Call with the
server's persistence values.
*/}}
{{- define "medbook.keptSecret" -}}
{{- if and .enabled (not .deleteClaimsOnUninstall) }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/*
What a StatefulSet of an in-chart server sets on its pods' volumes: fsGroup is applied
once, when the volume's root does not match yet (fsGroupChangePolicy: OnRootMismatch),
not at every mount: a recursive chmod would make RabbitMQ's Erlang cookie and
PostgreSQL's data directory group-accessible, which both refuse.
Call with the user id.
*/}}
{{- define "medbook.serverPodSecurity" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* What happens to a server's PersistentVolumeClaim when the release is uninstalled. */}}
{{- define "medbook.claimRetention" -}}
{{- if .deleteClaimsOnUninstall }}
persistentVolumeClaimRetentionPolicy:
  whenDeleted: Delete
  whenScaled: Retain
{{- end }}
{{- end }}

{{/* ---- Pod parts ------------------------------------------------------------------- */}}

{{/*
Environment of the booking, discount and migration containers beyond the ConfigMap:
the credentials, each from its Secret by the name the services read.
*/}}
{{- define "medbook.env.database" -}}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "medbook.postgresql.secret" . }}
      key: DB_PASSWORD
      optional: {{ not .Values.postgresql.enabled }}
{{- if not .Values.postgresql.enabled }}
- name: MEDBOOK_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "medbook.postgresql.secret" . }}
      key: MEDBOOK_DATABASE_URL
      optional: true
{{- end }}
{{- end }}

{{- define "medbook.env.redis" -}}
{{- $secret := include "medbook.redis.secret" . }}
{{- if $secret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: REDIS_PASSWORD
      optional: {{ not .Values.redis.enabled }}
{{- if not .Values.redis.enabled }}
- name: MEDBOOK_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: MEDBOOK_REDIS_URL
      optional: true
{{- if include "medbook.redis.sentinels" . }}
- name: MEDBOOK_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: MEDBOOK_REDIS_SENTINEL_PASSWORD
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "medbook.env.rabbitmq" -}}
- name: MEDBOOK_RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "medbook.rabbitmq.secret" . }}
      key: MEDBOOK_RABBITMQ_URL
{{- end }}

{{- define "medbook.env.apiToken" -}}
{{- with include "medbook.apiTokenSecret" . }}
- name: MEDBOOK_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: MEDBOOK_API_TOKEN
{{- end }}
{{- end }}

{{- define "medbook.env.signing" -}}
{{- with .Values.signing }}
{{- if .existingSecret }}
- name: MEDBOOK_SIGNING_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: MEDBOOK_SIGNING_KEYS
{{- if .keyId }}
- name: MEDBOOK_SIGNING_KEY_ID
  value: {{ .keyId | quote }}
{{- end }}
- name: MEDBOOK_SIGNING_REQUIRED
  value: {{ .required | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings given by environment name in a values map (`config.env`, `booking.env`). */}}
{{- define "medbook.env.map" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Restarts the pods when their settings change. */}}
{{- define "medbook.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end }}

{{/* The writable /tmp of a read-only root filesystem. */}}
{{- define "medbook.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "medbook.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Egress to DNS, for every pod of the chart. */}}
{{- define "medbook.netpol.dns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end }}

{{/* Egress to one of the three servers: (list . "postgresql"). */}}
{{- define "medbook.netpol.egressTo" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $values := index $ctx.Values $component }}
- ports:
    - protocol: TCP
      port: {{ include (printf "medbook.%s.port" $component) $ctx }}
    {{- if and (eq $component "redis") (include "medbook.redis.sentinels" $ctx) }}
    - protocol: TCP
      port: {{ $values.external.sentinel.port }}
    {{- end }}
{{- if $values.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "medbook.selectorLabels" (list $ctx $component) | nindent 10 }}
{{- else if $values.external.egressTo }}
  to:
    {{- toYaml $values.external.egressTo | nindent 4 }}
{{- end }}
{{- end }}

{{/*
checkov findings that remain on purpose, suppressed in place with their reason:
annotations "checkov.io/skipN: <check>=<reason>". Call with (list . "CKV_K8S_35" ...);
the image checks are added by "medbook.checkov.image" only when they apply.
*/}}
{{- define "medbook.checkov" -}}
{{- $reasons := dict
  "CKV_K8S_15" "the pull policy is a value (image.pullPolicy): IfNotPresent suits immutable release tags and images loaded into kind"
  "CKV_K8S_43" "the tag is a value: skaffold deploys tag@digest, and image.tag may be tag@sha256:... in production"
  "CKV_K8S_35" "the services read their settings from environment variables only (services/medbook/config.py)"
  "CKV_K8S_40" "runs as the official image's own user, which owns its files (development-only server)"
  "CKV_K8S_8" "a one-shot helm test pod: nothing to probe"
  "CKV_K8S_9" "a one-shot helm test pod: nothing to probe"
}}
{{- range $i, $id := rest . }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (index $reasons $id) | quote }}
{{- end }}
{{- end }}

{{/* The image checks that apply to a pull policy and an image reference: (list policy image). */}}
{{- define "medbook.checkov.image" -}}
{{- $checks := list }}
{{- if ne (index . 0) "Always" }}{{ $checks = append $checks "CKV_K8S_15" }}{{ end }}
{{- if not (contains "@sha256:" (index . 1)) }}{{ $checks = append $checks "CKV_K8S_43" }}{{ end }}
{{- join " " $checks }}
{{- end }}
