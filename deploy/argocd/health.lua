-- Argo CD health check for capgo-server.io Bundle, Release and Channel resources. Register it
-- in argocd-cm under resource.customizations.health.capgo-server.io_Bundle,
-- resource.customizations.health.capgo-server.io_Release and
-- resource.customizations.health.capgo-server.io_Channel (see README).
-- A Release's staged rollout shows as Argo Rollouts' canaries do: Progressing while it advances,
-- Suspended while a person paused it, Degraded after it rolled back (Stalled, reason RolledBack)
-- until the spec names another bundle.
local progressing = { status = "Progressing", message = "Waiting for capgo-server to reconcile" }
if obj.status == nil or obj.status.conditions == nil then
  return progressing
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  progressing.message = "Waiting for capgo-server to observe generation " .. generation
  return progressing
end
local ready = nil
local reconciling = nil
for _, condition in ipairs(obj.status.conditions) do
  local current = generation == nil or condition.observedGeneration == nil or condition.observedGeneration >= generation
  if current and condition.type == "Stalled" and condition.status == "True" then
    return { status = "Degraded", message = condition.message }
  end
  if current and condition.type == "Ready" then
    ready = condition
  end
  if current and condition.type == "Reconciling" and condition.status == "True" then
    reconciling = condition
  end
end
if reconciling ~= nil and reconciling.reason == "RolloutPaused" then
  return { status = "Suspended", message = reconciling.message }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  progressing.message = ready.message
end
return progressing
