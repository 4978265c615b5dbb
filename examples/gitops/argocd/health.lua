-- Argo CD health check for secretgrants.io/SecretGrantRequest.
-- Healthy: Granted. Progressing: Pending or not yet decided. Degraded: everything that
-- needs a person (Denied, Rejected, Error, Revoked, Expired, Exhausted), with the
-- Ready condition's reason and message so the UI says why.
local hs = {}
local function ready(obj)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" then
        return c
      end
    end
  end
  return nil
end
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local cond = ready(obj)
local why = ""
if cond ~= nil then
  why = (cond.reason or "") .. ": " .. (cond.message or "")
end
if phase == nil or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "waiting for a decision " .. why
elseif obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not handled the latest spec yet"
elseif phase == "Granted" then
  hs.status = "Healthy"
  hs.message = why
else
  hs.status = "Degraded"
  hs.message = phase .. " - " .. why
end
return hs
