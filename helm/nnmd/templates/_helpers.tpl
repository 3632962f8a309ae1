{{/*
Names and labels, as `helm create` makes them, plus the pieces every Ray pod
shares: the image, the store (NNMD_STORE and its volume or credentials) and the
service account.
*/}}

{{- define "nnmd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name; kept to 40 characters because KubeRay derives longer names from it. */}}
{{- define "nnmd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nnmd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nnmd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nnmd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nnmd.labels" -}}
helm.sh/chart: {{ include "nnmd.chart" . }}
{{ include "nnmd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nnmd
{{- end }}

{{- define "nnmd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "nnmd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nnmd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nnmd.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "nnmd.fullname" .) }}
{{- end }}
{{- end }}

{{- define "nnmd.pvcName" -}}
{{- if .Values.store.pvc.existingClaim }}
{{- .Values.store.pvc.existingClaim }}
{{- else }}
{{- printf "%s-store" (include "nnmd.fullname" .) }}
{{- end }}
{{- end }}

{{- define "nnmd.s3SecretName" -}}
{{- if .Values.store.s3.existingSecret }}
{{- .Values.store.s3.existingSecret }}
{{- else if .Values.store.s3.accessKeyId }}
{{- printf "%s-s3" (include "nnmd.fullname" .) }}
{{- end }}
{{- end }}

{{/* The store's URL as every process sees it. */}}
{{- define "nnmd.storeUrl" -}}
{{- if eq .Values.store.type "s3" }}
{{- .Values.store.s3.url }}
{{- else }}
{{- printf "file://%s/%s" (trimSuffix "/" .Values.store.pvc.mountPath) .Values.store.pvc.path }}
{{- end }}
{{- end }}

{{/* Environment shared by every nnmd container (Ray head, workers, coordinator). */}}
{{- define "nnmd.storeEnv" -}}
- name: NNMD_STORE
  value: {{ include "nnmd.storeUrl" . | quote }}
{{- if eq .Values.store.type "s3" }}
{{- with .Values.store.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
- name: FSSPEC_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.store.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with include "nnmd.s3SecretName" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
{{- end }}

{{- define "nnmd.storeVolumeMount" -}}
{{- if eq .Values.store.type "pvc" -}}
- name: store
  mountPath: {{ .Values.store.pvc.mountPath }}
{{- end }}
{{- end }}

{{/* Volumes of every Ray pod: the store and a memory-backed /dev/shm for Ray's object store. */}}
{{- define "nnmd.rayVolumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.sharedMemorySize }}
{{- if eq .Values.store.type "pvc" }}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "nnmd.pvcName" . }}
{{- end }}
{{- end }}

{{- define "nnmd.rayVolumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- with include "nnmd.storeVolumeMount" . }}
{{ . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by all Ray pods. */}}
{{- define "nnmd.podCommon" -}}
serviceAccountName: {{ include "nnmd.serviceAccountName" . }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
{{- if kindIs "string" . }}
  - name: {{ . }}
{{- else }}
  - name: {{ .name }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fail early on values that JSON Schema cannot relate to each other. */}}
{{- define "nnmd.validate" -}}
{{- range $key := list "cpuWorkers" "gpuWorkers" }}
{{- $g := index $.Values.ray $key }}
{{- if $g.enabled }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "ray.%s: minReplicas (%d) is greater than maxReplicas (%d); lower minReplicas or raise maxReplicas" $key (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "ray.%s: replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $key (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.ray.cpuWorkers.enabled .Values.ray.gpuWorkers.enabled (eq .Values.ray.cpuWorkers.groupName .Values.ray.gpuWorkers.groupName) }}
{{- fail "ray.cpuWorkers.groupName and ray.gpuWorkers.groupName must differ" }}
{{- end }}
{{- if not (or .Values.ray.cpuWorkers.enabled .Values.ray.gpuWorkers.enabled) }}
{{- fail "ray: enable at least one worker group (ray.cpuWorkers.enabled or ray.gpuWorkers.enabled); the head runs no work" }}
{{- end }}
{{- if and (eq .Values.store.type "s3") (not .Values.store.s3.url) }}
{{- fail "store.s3.url: set it to s3://bucket/prefix when store.type is s3" }}
{{- end }}
{{- if and (eq .Values.store.type "s3") .Values.store.s3.accessKeyId (not .Values.store.s3.secretAccessKey) }}
{{- fail "store.s3.secretAccessKey: set it together with store.s3.accessKeyId (or use store.s3.existingSecret)" }}
{{- end }}
{{- if and .Values.console.ingress.enabled (not (and .Values.console.enabled .Values.coordinator.enabled)) }}
{{- fail "console.ingress.enabled: the Ingress needs the console (console.enabled and coordinator.enabled)" }}
{{- end }}
{{- if and .Values.console.enabled .Values.coordinator.enabled (eq (int .Values.console.port) (int .Values.coordinator.port)) }}
{{- fail (printf "console.port: %d is the coordinator's port too; give the console another" (int .Values.console.port)) }}
{{- end }}
{{- if and (eq .Values.store.type "pvc") (not .Values.store.pvc.create) (not .Values.store.pvc.existingClaim) }}
{{- fail "store.pvc.existingClaim: name an existing PersistentVolumeClaim, or set store.pvc.create to true" }}
{{- end }}
{{- end }}
