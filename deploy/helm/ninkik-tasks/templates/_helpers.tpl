{{/* Names: every object name derives from ninkik-tasks.fullname. */}}
{{- define "ninkik-tasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ninkik-tasks.fullname" -}}
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

{{/* A component's name: fullname-component (worker, worker-control, ingest, beat, flower). */}}
{{- define "ninkik-tasks.component" -}}
{{- printf "%s-%s" (include "ninkik-tasks.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ninkik-tasks.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ninkik-tasks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ninkik-tasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ninkik-tasks.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "ninkik-tasks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ninkik-tasks.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ninkik-tasks.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* checkov skips, each with its reason (checkov reads checkov.io/skipN annotations). */}}
{{- define "ninkik-tasks.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_35=The settings (pydantic) and Celery read the broker and Redis URLs and the API token from the environment; they come from an existing Secret by reference, never from values
{{- if not .Values.image.digest }}
checkov.io/skip2: CKV_K8S_43=Pulled by the release tag (appVersion) unless image.digest is set; set it to pin by digest
{{- if ne .Values.image.pullPolicy "Always" }}
checkov.io/skip3: CKV_K8S_15=Release tags never move, so IfNotPresent pulls the same image; set image.digest (or pullPolicy Always) otherwise
{{- end }}
{{- end }}
{{- end -}}

{{/* The environment of every ninkik-tasks container: the ConfigMap, AWS_REGION, the secrets by reference. */}}
{{- define "ninkik-tasks.env" -}}
{{- $s := .Values.secrets -}}
{{- $name := required "secrets.name: the existing Secret with the broker and Redis URLs and the API token" $s.name -}}
envFrom:
  - configMapRef:
      name: {{ include "ninkik-tasks.fullname" . }}
  {{- with .Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
env:
  {{- with .Values.aws.region }}
  - name: AWS_REGION
    value: {{ . | quote }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- range $var, $key := dict "NINKIK_BROKER_URL" $s.keys.brokerUrl "NINKIK_RESULT_BACKEND" $s.keys.resultBackend "NINKIK_REDIS_URL" $s.keys.redisUrl "NINKIK_API_TOKEN" $s.keys.apiToken "NINKIK_BROKER_MANAGEMENT_URL" $s.keys.brokerManagementUrl }}
  {{- if $key }}
  - name: {{ $var }}
    valueFrom:
      secretKeyRef:
        name: {{ $name }}
        key: {{ $key }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* Volumes every pod writes to, on a read-only root filesystem: /tmp (and the health files under it). */}}
{{- define "ninkik-tasks.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ninkik-tasks.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Exec probes (docs/health.md): `ninkik-tasks health <process>` for startup and liveness, the same with --ready
for readiness. */}}
{{- define "ninkik-tasks.healthProbes" -}}
{{- if .root.Values.probes.enabled -}}
startupProbe:
  exec:
    command: [ninkik-tasks, health, {{ .process }}]
  {{- toYaml .root.Values.probes.startup | nindent 2 }}
livenessProbe:
  exec:
    command: [ninkik-tasks, health, {{ .process }}]
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  exec:
    command: [ninkik-tasks, health, {{ .process }}, --ready]
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* A pod template's metadata: .root, .name (the component), .values (its values). The selector labels, then the
component's podLabels, the global podLabels and commonLabels (the first of these to name a label wins); the config's
checksum and the pod annotations (the component's win over the global ones). */}}
{{- define "ninkik-tasks.podMetadata" -}}
{{- $root := .root -}}
{{- $labels := merge (fromYaml (include "ninkik-tasks.selectorLabels" .)) (.values.podLabels | default dict) ($root.Values.podLabels | default dict) ($root.Values.commonLabels | default dict) -}}
{{- $annotations := merge (dict) (.values.podAnnotations | default dict) ($root.Values.podAnnotations | default dict) -}}
labels:
  {{- toYaml $labels | nindent 2 }}
annotations:
  checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
  {{- if and $root.Values.accounts (has .name (list "ingest" "worker" "worker-control" "beat")) }}
  checksum/accounts: {{ include (print $root.Template.BasePath "/accounts.yaml") $root | sha256sum }}
  {{- end }}
  {{- with $annotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The pod spec's common part: .root, .values (the component's values). */}}
{{- define "ninkik-tasks.podCommon" -}}
{{- $root := .root -}}
{{- with .root -}}
serviceAccountName: {{ include "ninkik-tasks.serviceAccountName" . }}
# No pod talks to the Kubernetes API; IRSA and EKS Pod Identity mount their own AWS token.
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
{{- with (default $root.Values.priorityClassName .values.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Scheduling of a component's pods: .root, .name, .values. A spread constraint without a labelSelector gets the
component's selector labels (values cannot name the release). */}}
{{- define "ninkik-tasks.scheduling" -}}
{{- $v := .values -}}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (fromYaml (include "ninkik-tasks.selectorLabels" $))) }}
  {{- end }}
  - {{- toYaml $constraint | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The accounts file (templates/accounts.yaml): its ConfigMap's name, where pods that read AWS mount it, and what
those pods add to their env, volumeMounts and volumes (nothing without `accounts`). */}}
{{- define "ninkik-tasks.accountsName" -}}
{{- printf "%s-accounts" (include "ninkik-tasks.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ninkik-tasks.accountsDir" -}}/etc/ninkik-tasks/accounts{{- end -}}

{{/* Appended to the env list of "ninkik-tasks.env" (its last key). */}}
{{- define "ninkik-tasks.accountsEnv" -}}
{{- if .Values.accounts -}}
- name: NINKIK_ACCOUNTS_FILE
  value: {{ printf "%s/accounts.json" (include "ninkik-tasks.accountsDir" .) }}
{{- end -}}
{{- end -}}

{{- define "ninkik-tasks.accountsMount" -}}
{{- if .Values.accounts -}}
- name: accounts
  mountPath: {{ include "ninkik-tasks.accountsDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "ninkik-tasks.accountsVolume" -}}
{{- if .Values.accounts -}}
- name: accounts
  configMap:
    name: {{ include "ninkik-tasks.accountsName" . }}
{{- end -}}
{{- end -}}

{{/* What the accounts file's loader would refuse at start (one line, exit 2), refused at render time instead. */}}
{{- define "ninkik-tasks.accountsChecked" -}}
{{- range $name := list "NINKIK_ACCOUNTS_FILE" "NINKIK_SQS_QUEUE_URL" "NINKIK_AWS_ACCOUNT_IDS" }}
{{- if ne (toString (index $.Values.config $name | default "")) "" }}
{{- fail (printf "accounts and config.%s are both set: put the queues and accounts in `accounts` and unset config.%s" $name $name) }}
{{- end }}
{{- end }}
{{- $ids := list }}
{{- range .Values.accounts }}
{{- if has .id $ids }}
{{- fail (printf "accounts: account %s is listed twice: list each account once" .id) }}
{{- end }}
{{- $ids = append $ids .id }}
{{- end }}
{{- range $account := .Values.accounts }}
{{- if and .role_arn (not (contains (printf ":%s:role/" .id) .role_arn)) }}
{{- fail (printf "accounts: role %s is not in account %s: give a role of the account itself" .role_arn .id) }}
{{- end }}
{{- range .queues | default list }}
{{- $owner := regexFind "/[0-9]{12}/" . | trimAll "/" }}
{{- if ne $owner $account.id }}
{{- fail (printf "accounts: queue %s is listed under account %s but is in account %s: list it under %s (a queue is read with its own account's identity)" . $account.id $owner $owner) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
