{{- /*
The medbook.slo rule group from monitoring.slo: per objective, its error ratio over the four
windows (recording rules) and the two burn-rate alerts. At the default objectives this is the
medbook.slo group of alerts/medbook-alerts.yaml, the promtool-tested one (a test checks it).
*/}}
{{- define "medbook.sloTimeouts" -}}
max by (namespace) (rate(medbook_sweep_rejected_bookings_total[{{ . }}])) / (sum by (namespace) (rate(medbook_saga_outcomes_total{status!="CANCELLED"}[{{ . }}])) + max by (namespace) (rate(medbook_sweep_rejected_bookings_total[{{ . }}])))
{{- end }}
{{- define "medbook.sloSlow" -}}
{{- $window := index . 0 }}{{- $le := index . 1 -}}
1 - sum by (namespace) (rate(medbook_saga_duration_seconds_bucket{le="{{ $le }}"}[{{ $window }}])) / sum by (namespace) (rate(medbook_saga_duration_seconds_count[{{ $window }}]))
{{- end }}
{{- define "medbook.sloGroup" -}}
{{- $success := .Values.monitoring.slo.sagaSuccess.objective }}
{{- $latency := .Values.monitoring.slo.sagaLatency.objective }}
{{- $le := .Values.monitoring.slo.sagaLatency.thresholdSeconds }}
{{- $successPercent := printf "%.6g" (mulf $success 100) }}
{{- $latencyPercent := printf "%.6g" (mulf $latency 100) }}
name: medbook.slo
rules:
  {{- range $window := list "5m" "30m" "1h" "6h" }}
  - record: medbook:saga_timeouts:ratio_rate{{ $window }}
    expr: {{ include "medbook.sloTimeouts" $window | quote }}
  {{- end }}
  {{- range $window := list "5m" "30m" "1h" "6h" }}
  - record: medbook:saga_slow:ratio_rate{{ $window }}
    expr: {{ include "medbook.sloSlow" (list $window $le) | quote }}
  {{- end }}
  - alert: MedbookSagaSuccessBudgetBurningFast
    expr: {{ printf "medbook:saga_timeouts:ratio_rate1h > (14.4 * (1 - %v)) and medbook:saga_timeouts:ratio_rate5m > (14.4 * (1 - %v))" $success $success | quote }}
    for: 2m
    labels:
      severity: critical
      slo: saga-success
    annotations:
      summary: Bookings time out 14.4 times faster than the objective allows
      description: {{ printf "{{ $value | humanizePercentage }} of the bookings of the last hour were rejected by the timeout sweep instead of being decided (objective: %s %% decided). At this rate the 30-day error budget is gone in two days: check the discount worker, the broker and the outbox backlog." $successPercent | quote }}
  - alert: MedbookSagaSuccessBudgetBurning
    expr: {{ printf "medbook:saga_timeouts:ratio_rate6h > (6 * (1 - %v)) and medbook:saga_timeouts:ratio_rate30m > (6 * (1 - %v))" $success $success | quote }}
    for: 15m
    labels:
      severity: warning
      slo: saga-success
    annotations:
      summary: Bookings time out 6 times faster than the objective allows
      description: {{ printf "{{ $value | humanizePercentage }} of the bookings of the last 6 hours were rejected by the timeout sweep instead of being decided (objective: %s %% decided). At this rate the 30-day error budget is gone in five days." $successPercent | quote }}
  - alert: MedbookSagaLatencyBudgetBurningFast
    expr: {{ printf "medbook:saga_slow:ratio_rate1h > (14.4 * (1 - %v)) and medbook:saga_slow:ratio_rate5m > (14.4 * (1 - %v))" $latency $latency | quote }}
    for: 2m
    labels:
      severity: critical
      slo: saga-latency
    annotations:
      summary: Sagas are slow 14.4 times more often than the objective allows
      description: {{ printf "{{ $value | humanizePercentage }} of the sagas of the last hour took longer than %s s from booking to final status (objective: %s %% within %s s). At this rate the 30-day error budget is gone in two days. A slow bucket of medbook_saga_duration_seconds links its exemplar traces." $le $latencyPercent $le | quote }}
  - alert: MedbookSagaLatencyBudgetBurning
    expr: {{ printf "medbook:saga_slow:ratio_rate6h > (6 * (1 - %v)) and medbook:saga_slow:ratio_rate30m > (6 * (1 - %v))" $latency $latency | quote }}
    for: 15m
    labels:
      severity: warning
      slo: saga-latency
    annotations:
      summary: Sagas are slow 6 times more often than the objective allows
      description: {{ printf "{{ $value | humanizePercentage }} of the sagas of the last 6 hours took longer than %s s from booking to final status (objective: %s %% within %s s). At this rate the 30-day error budget is gone in five days." $le $latencyPercent $le | quote }}
{{- end }}
