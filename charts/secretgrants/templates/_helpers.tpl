{{- define "secretgrants.labels" -}}
app.kubernetes.io/name: secretgrants
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: secretgrants
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "secretgrants.selector" -}}
app.kubernetes.io/name: secretgrants
app.kubernetes.io/component: operator
{{- end -}}
{{- define "secretgrants.serviceAccountName" -}}
secretgrants-operator
{{- end -}}
{{/* The username the apiserver gives the operator: the admission policies allow it alone. */}}
{{- define "secretgrants.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "secretgrants.serviceAccountName" . }}
{{- end -}}
