{{- define "fleetops-agent.labels" -}}
app.kubernetes.io/name: fleetops-agent
app.kubernetes.io/part-of: fleetops
{{- end }}
{{- define "fleetops-agent.subjects" -}}
- kind: ServiceAccount
  name: fleetops-agent
  namespace: fleetops-system
{{- end }}
