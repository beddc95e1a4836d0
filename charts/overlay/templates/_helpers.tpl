{{/* vim: set filetype=mustache: */}}

{{- define "overlay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name prefix. Limited to 40 characters: StatefulSet pod names must leave room for the
controller-revision-hash label (63) and per-pod Service names for "-supernode-NN".
*/}}
{{- define "overlay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "overlay.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "overlay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "overlay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "overlay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "overlay.labels" -}}
helm.sh/chart: {{ include "overlay.chart" . }}
{{ include "overlay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: overlay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one role; call with (dict "root" $ "role" "supernode"). */}}
{{- define "overlay.roleLabels" -}}
{{ include "overlay.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "overlay.roleSelectorLabels" -}}
{{ include "overlay.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* metadata.annotations block content (commonAnnotations plus extra), or nothing. */}}
{{- define "overlay.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.root.Values.commonAnnotations | default dict)) -}}
{{- if $all -}}
annotations:
  {{- toYaml $all | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "overlay.roleName" -}}
{{- printf "%s-%s" (include "overlay.fullname" .root) .role -}}
{{- end -}}

{{- define "overlay.headlessName" -}}
{{- printf "%s-%s-headless" (include "overlay.fullname" .root) .role -}}
{{- end -}}

{{- define "overlay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "overlay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "overlay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Comma-separated HOST:PORT list of the bootstrap nodes for supernodes and the helm test:
the per-pod DNS names of the bootstrap headless Service (published before the pods are
ready), then supernode.extraBootstrap.
*/}}
{{- define "overlay.bootstrapAddresses" -}}
{{- $addrs := list -}}
{{- if .Values.bootstrap.enabled -}}
{{- $sts := include "overlay.roleName" (dict "root" . "role" "bootstrap") -}}
{{- $svc := include "overlay.headlessName" (dict "root" . "role" "bootstrap") -}}
{{- $ns := include "overlay.namespace" . -}}
{{- range $i := until (int .Values.bootstrap.replicaCount) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc.%s:%d" $sts $i $svc $ns $.Values.clusterDomain (int $.Values.bootstrap.port)) -}}
{{- end -}}
{{- end -}}
{{- range .Values.supernode.extraBootstrap -}}
{{- $addrs = append $addrs . -}}
{{- end -}}
{{- if not $addrs -}}
{{- fail "overlay: no bootstrap nodes: enable bootstrap (bootstrap.enabled=true) or list supernode.extraBootstrap" -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/* securityContext blocks without the chart-only "enabled" key. */}}
{{- define "overlay.podSecurityContext" -}}
{{- if .Values.podSecurityContext.enabled -}}
{{- $ctx := omit .Values.podSecurityContext "enabled" -}}
{{- if not $ctx.supplementalGroups }}{{- $ctx = omit $ctx "supplementalGroups" -}}{{- end -}}
{{- if not $ctx.sysctls }}{{- $ctx = omit $ctx "sysctls" -}}{{- end -}}
securityContext:
  {{- toYaml $ctx | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "overlay.containerSecurityContext" -}}
{{- if .Values.containerSecurityContext.enabled -}}
securityContext:
  {{- toYaml (omit .Values.containerSecurityContext "enabled") | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* An httpGet probe; call with (dict "probe" $cfg "path" "/healthz"). */}}
{{- define "overlay.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end -}}

{{/* Checks of values the schema cannot express. */}}
{{- define "overlay.validate" -}}
{{- $exposure := .Values.exposure.type -}}
{{- range $role := list "bootstrap" "supernode" -}}
{{- $v := index $.Values $role -}}
{{- if $v.enabled -}}
{{- $n := int $v.replicaCount -}}
{{- $addrs := $v.advertise.addresses -}}
{{- if eq (int $v.port) (int $v.httpPort) -}}
{{- fail (printf "overlay: %s.port and %s.httpPort are both %d; the HTTP port must differ" $role $role (int $v.port)) -}}
{{- end -}}
{{- if and (eq $exposure "LoadBalancer") (lt (len $addrs) $n) -}}
{{- fail (printf "overlay: exposure.type=LoadBalancer needs %s.advertise.addresses to list one public IP:PORT per pod (%d pods, %d addresses): a pod cannot learn its load balancer's address by itself" $role $n (len $addrs)) -}}
{{- end -}}
{{- if and $addrs (lt (len $addrs) $n) -}}
{{- fail (printf "overlay: %s.advertise.addresses lists %d addresses for %d pods; list one per pod or none" $role (len $addrs) $n) -}}
{{- end -}}
{{- if and (eq $exposure "NodePort") (gt (add (int $v.service.nodePortBase) $n -1) 32767) -}}
{{- fail (printf "overlay: %s.service.nodePortBase %d + %d pods runs past the NodePort range (30000-32767)" $role (int $v.service.nodePortBase) $n) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $exposure "NodePort") .Values.bootstrap.enabled .Values.supernode.enabled -}}
{{- $b0 := int .Values.bootstrap.service.nodePortBase -}}
{{- $b1 := add $b0 (int .Values.bootstrap.replicaCount) -}}
{{- $s0 := int .Values.supernode.service.nodePortBase -}}
{{- $s1 := add $s0 (int .Values.supernode.replicaCount) -}}
{{- if and (lt $b0 $s1) (lt $s0 $b1) -}}
{{- fail (printf "overlay: NodePort ranges overlap: bootstrap %d-%d and supernode %d-%d; move one nodePortBase" $b0 (sub $b1 1) $s0 (sub $s1 1)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $exposure "hostNetwork") .Values.bootstrap.enabled .Values.supernode.enabled -}}
{{- $used := list (int .Values.bootstrap.port) (int .Values.bootstrap.httpPort) -}}
{{- range $p := list (int .Values.supernode.port) (int .Values.supernode.httpPort) -}}
{{- if has $p $used -}}
{{- fail (printf "overlay: with exposure.type=hostNetwork bootstrap and supernode pods share node ports; port %d is used by both roles" $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Quote one word for /bin/sh. */}}
{{- define "overlay.shquote" -}}
{{- printf "'%s'" (replace "'" "'\\''" (toString .)) -}}
{{- end -}}

{{/* HOST:PORT, with brackets around an IPv6 host. */}}
{{- define "overlay.hostport" -}}
{{- if contains ":" .host -}}
{{- printf "[%s]:%d" .host (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .host (int .port) -}}
{{- end -}}
{{- end -}}
