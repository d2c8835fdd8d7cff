{{/* A Celery worker Deployment: .root, .name (worker or worker-control), .values, .replicas (nil: the autoscaler's),
.strategy (empty: RollingUpdate). */}}
{{- define "ninkik-tasks.workerDeployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $c := dict "root" $root "name" .name "values" $v -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "ninkik-tasks.component" $c }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ninkik-tasks.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    {{- include "ninkik-tasks.checkovSkips" $root | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- with .strategy }}
  strategy:
    type: {{ . }}
    # Removes the rollingUpdate the API server filled in while the Deployment was RollingUpdate: an upgrade from a
    # chart without this strategy is refused otherwise ("may not be specified when strategy type is 'Recreate'").
    rollingUpdate: null
  {{- end }}
  selector:
    matchLabels:
      {{- include "ninkik-tasks.selectorLabels" $c | nindent 6 }}
  template:
    metadata:
      {{- include "ninkik-tasks.podMetadata" $c | nindent 6 }}
    spec:
      {{- include "ninkik-tasks.podCommon" $c | nindent 6 }}
      # A stopping worker finishes what it runs (warm shutdown) within this; docs/health.md.
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      containers:
        - name: worker
          image: {{ include "ninkik-tasks.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          # The script ends in `exec celery ... worker`: celery is PID 1 and gets SIGTERM (no tini needed).
          command: [/app/workers/entrypoint.sh, "--hostname={{ .hostname }}@%h"]
          {{- include "ninkik-tasks.env" $root | nindent 10 }}
          {{- with include "ninkik-tasks.accountsEnv" $root }}{{ . | nindent 12 }}{{ end }}
            - name: NINKIK_WORKER_QUEUES
              value: {{ join "," $v.queues | quote }}
            - name: NINKIK_WORKER_POOL
              value: {{ $v.pool | quote }}
            - name: NINKIK_WORKER_CONCURRENCY
              value: {{ $v.concurrency | toString | quote }}
          {{- include "ninkik-tasks.healthProbes" (dict "root" $root "process" "worker") | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "ninkik-tasks.tmpMount" $root | nindent 12 }}
            {{- with include "ninkik-tasks.accountsMount" $root }}{{ . | nindent 12 }}{{ end }}
      volumes:
        {{- include "ninkik-tasks.tmpVolume" $root | nindent 8 }}
        {{- with include "ninkik-tasks.accountsVolume" $root }}{{ . | nindent 8 }}{{ end }}
      {{- include "ninkik-tasks.scheduling" $c | nindent 6 }}
{{- end -}}
