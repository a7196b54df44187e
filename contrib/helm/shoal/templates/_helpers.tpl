{{/* The chart's name. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it contains the chart's name (a release named
shoal gives DaemonSet shoal and Service shoal-peers, as the kustomize base), else release-chart. */}}
{{- define "shoal.fullname" -}}
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

{{/* Labels on every object: Helm's standard ones and the kustomize base's part-of. Each object
adds the kustomize base's name/component labels itself. */}}
{{- define "shoal.labels" -}}
{{ include "shoal.helmLabels" . }}
app.kubernetes.io/part-of: shoal
{{- end }}

{{/* Helm's standard labels (alone on the swarm key Secret, as in the kustomize overlay). */}}
{{- define "shoal.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- end }}

{{/* The DaemonSet's selector and its pods' labels. */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/component: mirror
{{- end }}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shoal.peersName" -}}
{{- printf "%s-peers" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The swarm key: the Secret's name and the key in it. Fails when neither a key nor a Secret is
given: the daemon must not join a swarm without one, and the chart never makes one up. */}}
{{- define "shoal.swarmKeySecret" -}}
{{- if .Values.swarmKey.existingSecret }}
{{- .Values.swarmKey.existingSecret }}
{{- else if .Values.swarmKey.value }}
{{- printf "%s-swarm-key" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- fail "shoal needs a swarm key: --set-file swarmKey.value=swarm.key (make one: printf '/key/swarm/psk/1.0.0/\\n/base16/\\n%s\\n' \"$(od -An -N32 -tx1 /dev/urandom | tr -d ' \\n')\" > swarm.key), or --set swarmKey.existingSecret=NAME of a Secret holding it" }}
{{- end }}
{{- end }}

{{- define "shoal.swarmKeyKey" -}}
{{- if .Values.swarmKey.existingSecret }}{{ .Values.swarmKey.existingSecretKey }}{{ else }}swarm.key{{ end }}
{{- end }}

{{/* The port at the end of HOST:PORT or of a /ip4/…/tcp/PORT multiaddr. */}}
{{- define "shoal.port" -}}
{{- $p := regexFind "[0-9]+$" (toString .) }}
{{- if not $p }}{{ fail (printf "no port in %q" (toString .)) }}{{ end }}
{{- $p }}
{{- end }}

{{- define "shoal.mirrorPort" -}}
{{- include "shoal.port" .Values.config.listen }}
{{- end }}

{{- define "shoal.metricsPort" -}}
{{- if eq (toString .Values.config.metrics_listen) "off" }}
{{- fail "config.metrics_listen: the chart's probes need the metrics listener; it cannot be off" }}
{{- end }}
{{- include "shoal.port" .Values.config.metrics_listen }}
{{- end }}

{{- define "shoal.p2pPort" -}}
{{- $listen := .Values.config.p2p.listen | default (list "/ip4/0.0.0.0/tcp/5001") }}
{{- include "shoal.port" (first $listen) }}
{{- end }}

{{/* The direct port for peers' blob bytes: p2p.direct_port, 0 = the P2P port + 1, -1 = none (empty). */}}
{{- define "shoal.p2pDirectPort" -}}
{{- $d := int (.Values.config.p2p.direct_port | default 0) }}
{{- if gt $d 0 }}{{ $d }}{{- else if eq $d 0 }}{{ add1 (int (include "shoal.p2pPort" .)) }}{{- end }}
{{- end }}

{{/* The daemon's configuration file: config, plus the swarm key's path and the peers Service. */}}
{{- define "shoal.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $p2p := deepCopy (index $cfg "p2p" | default dict) }}
{{- if not (index $p2p "bootstrap_dns") }}
{{- $_ := set $p2p "bootstrap_dns" (printf "%s.%s.svc:%s" (include "shoal.peersName" .) .Release.Namespace (include "shoal.p2pPort" .)) }}
{{- end }}
{{- $_ := set $p2p "swarm_key_file" (printf "/etc/shoal/swarm/%s" (include "shoal.swarmKeyKey" .)) }}
{{- $_ := set $cfg "p2p" $p2p }}
{{- toYaml $cfg }}
{{- end }}
