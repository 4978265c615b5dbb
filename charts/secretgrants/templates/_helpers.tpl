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
{{/* The webhook configurations' name (the operator's SECRETGRANTS_WEBHOOK_CONFIG_NAME
default); the finalizer policy and its binding are named after it. */}}
{{- define "secretgrants.webhookConfigName" -}}
secretgrants
{{- end -}}
{{- define "secretgrants.finalizerPolicyName" -}}
{{ include "secretgrants.webhookConfigName" . }}-finalizer
{{- end -}}
{{/* The Service in front of the webhook, and the Secret with its serving certificate. */}}
{{- define "secretgrants.webhookService" -}}
secretgrants-webhook
{{- end -}}
{{- define "secretgrants.webhookTLSSecret" -}}
secretgrants-webhook-tls
{{- end -}}
{{/* "true" when the chart provides the serving certificate: always when it installs the
admission configuration, and whenever cert-manager issues it. */}}
{{- define "secretgrants.chartCertificate" -}}
{{- if or (not .Values.webhook.manageConfiguration) .Values.webhook.certManager.issuer -}}
true
{{- end -}}
{{- end -}}
{{/* "true" when the finalizer MutatingAdmissionPolicy is wanted (webhook.finalizerPolicy;
auto: Kubernetes 1.36 or newer, where admissionregistration.k8s.io/v1 serves it). */}}
{{- define "secretgrants.finalizerPolicy" -}}
{{- $want := .Values.webhook.finalizerPolicy -}}
{{- if eq (toString $want) "auto" -}}
{{- semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version -}}
{{- else -}}
{{- $want -}}
{{- end -}}
{{- end -}}
{{/* The webhook configurations' metadata and the fields both webhooks share. */}}
{{- define "secretgrants.webhookMeta" }}
metadata:
  name: {{ include "secretgrants.webhookConfigName" . }}
  labels:
    {{- include "secretgrants.labels" . | nindent 4 }}
  {{- with .Values.webhook.certManager.issuer }}
  annotations:
    cert-manager.io/inject-ca-from: {{ $.Release.Namespace }}/{{ include "secretgrants.webhookService" $ }}
  {{- end }}
{{- end }}
{{- define "secretgrants.webhookCommon" }}
admissionReviewVersions: ["v1"]
sideEffects: NoneOnDryRun
failurePolicy: {{ .Values.webhook.failurePolicy }}
matchPolicy: Equivalent
timeoutSeconds: {{ int .Values.webhook.timeoutSeconds }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: [{{ .Release.Namespace | quote }}, kube-system]
{{- end }}
