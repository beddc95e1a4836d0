{{/*
The container's start script (POSIX sh), called with (dict "root" $ "role" "supernode").

It depends only on these environment variables, so it can also be run outside Kubernetes:
  POD_NAME        <statefulset>-<ordinal>; the ordinal picks the advertised address and key
  HOST_IP         the node's IP (only when the advertised address is discovered)
  STATE_DIR       --state-dir (the persistent volume)
  SECRET_KEY_DIR  where identity.existingSecret is mounted (only with an existing Secret)
  KEY_DIR         private in-memory directory for the key copy (only with an existing Secret)
It ends by exec-ing the daemon, so the daemon is PID 1 and receives SIGTERM itself.
*/}}
{{- define "overlay.startScript" -}}
{{- $root := .root -}}
{{- $role := .role -}}
{{- $v := index $root.Values $role -}}
{{- $exposure := $root.Values.exposure.type -}}
{{- $secret := $root.Values.identity.existingSecret -}}
set -eu
ordinal="${POD_NAME##*-}"
{{- if $v.advertise.addresses }}
case "$ordinal" in
{{- range $i, $a := $v.advertise.addresses }}
  {{ $i }}) advertise={{ include "overlay.shquote" $a }} ;;
{{- end }}
  *) echo "overlay: no address for pod $POD_NAME in {{ $role }}.advertise.addresses" >&2; exit 64 ;;
esac
{{- else }}
{{- if eq $exposure "hostNetwork" }}
public_port={{ int $v.port }}
{{- else }}
public_port=$(({{ int $v.service.nodePortBase }} + ordinal))
{{- end }}
case "$HOST_IP" in
  *:*) advertise="[$HOST_IP]:$public_port" ;;
  *) advertise="$HOST_IP:$public_port" ;;
esac
{{- end }}
{{- if $secret }}
# Secret volumes are group-readable when the pod has an fsGroup, and the daemon refuses key
# files that others can read: give it a private copy (mode 0600) on an in-memory volume.
key_source="$SECRET_KEY_DIR/{{ $role }}-$ordinal.key"
if [ ! -r "$key_source" ]; then
  echo "overlay: Secret {{ $secret }} has no entry {{ $role }}-$ordinal.key for pod $POD_NAME" >&2
  exit 64
fi
key="$KEY_DIR/node.key"
rm -f "$key"
(umask 077 && cat "$key_source" > "$key")
{{- else }}
# The key is generated on first start (mode 0600) and kept on the persistent volume. Kubelet's
# fsGroup handling can add group rw bits to files on the volume, and the daemon refuses a key
# others can read: take them away again.
key="$STATE_DIR/node.key"
if [ -f "$key" ]; then chmod 0600 "$key"; fi
{{- end }}
echo "overlay: starting {{ $role }} $POD_NAME advertising $advertise" >&2
exec overlay {{ $role }} \
  --listen {{ include "overlay.shquote" (include "overlay.hostport" (dict "host" $v.listenHost "port" $v.port)) }} \
  --advertise "$advertise" \
{{- if eq $role "supernode" }}
  --bootstrap {{ include "overlay.shquote" (include "overlay.bootstrapAddresses" $root) }} \
{{- if not (kindIs "invalid" $v.maxClients) }}
  --max-clients {{ int $v.maxClients }} \
{{- end }}
{{- if not $v.relay.enabled }}
  --no-relay \
{{- else if $v.relay.budget }}
  --relay-budget {{ include "overlay.shquote" $v.relay.budget }} \
{{- end }}
{{- end }}
{{- range $v.extraArgs }}
  {{ include "overlay.shquote" . }} \
{{- end }}
  --key "$key" \
  --state-dir "$STATE_DIR" \
  --http {{ include "overlay.shquote" (include "overlay.hostport" (dict "host" $v.listenHost "port" $v.httpPort)) }}
{{- end -}}
