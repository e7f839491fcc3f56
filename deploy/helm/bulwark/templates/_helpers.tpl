{{/* Names, labels and derived settings shared by every template. */}}

{{- define "bulwark.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The CA's objects are named bulwark-ca whatever the release is called: RBAC resourceNames,
the leader Lease and Istio's conventions refer to fixed names. */}}
{{- define "bulwark.fullname" -}}
{{- default "bulwark-ca" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulwark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulwark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulwark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ca
{{- end -}}

{{- define "bulwark.labels" -}}
helm.sh/chart: {{ include "bulwark.chart" . }}
app.kubernetes.io/name: {{ include "bulwark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bulwark
{{- end -}}

{{- define "bulwark.serviceName" -}}
{{- if .Values.service.name -}}
{{- .Values.service.name -}}
{{- else if eq .Values.mode "with-istio" -}}
bulwark-ca
{{- else -}}
istiod
{{- end -}}
{{- end -}}

{{/* DNS SANs of the serving certificate: the Service's names, plus istiod's in with-istio mode
(proxies keep ISTIOD_SAN / --istiod-san at its default). */}}
{{- define "bulwark.serverDnsNames" -}}
{{- $svc := include "bulwark.serviceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- if ne $svc "istiod" -}}
{{- $names = append $names (printf "istiod.%s.svc" $ns) -}}
{{- end -}}
{{- join "," (concat $names .Values.extraServerDnsNames) -}}
{{- end -}}

{{- define "bulwark.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "bulwark.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{- define "bulwark.postgresqlName" -}}
{{- printf "%s-postgresql" (include "bulwark.fullname" .) -}}
{{- end -}}

{{/* The Secret and key holding the record's postgresql:// DSN. */}}
{{- define "bulwark.recordSecret" -}}
{{- if .Values.record.postgresql.evaluation.enabled -}}
{{- printf "%s-record" (include "bulwark.fullname" .) -}}
{{- else -}}
{{- .Values.record.postgresql.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "bulwark.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A random secret that survives `helm upgrade`: reuse the value already in the cluster. */}}
{{- define "bulwark.keptSecret" -}}
{{- $existing := lookup "v1" "Secret" .ns .name -}}
{{- if and $existing (index $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum .length | b64enc -}}
{{- end -}}
{{- end -}}

{{/* multicluster.clusterAliases as ALIAS=CLUSTER,... (BULWARK_CLUSTER_ALIASES), sorted by alias. */}}
{{- define "bulwark.clusterAliases" -}}
{{- $pairs := list -}}
{{- range $alias := keys . | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $alias (index $ $alias)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
