-- Argo CD health check for servegraph.io/ModelDeployment.
-- Install: argocd-cm, key resource.customizations.health.servegraph.io_ModelDeployment
-- (docs/gitops.md). Argo CD sets `obj` to the live object; the script returns
-- {status = Healthy | Progressing | Degraded, message = ...}.
--
-- Order matters: a status the operator wrote for an older generation says nothing about
-- the spec just applied, so an unobserved generation is Progressing whatever the
-- conditions say; then a spec the operator refused (InvalidSpec) or a Degraded graph;
-- then Ready; then Progressing.
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the servegraph operator to observe the ModelDeployment"
  return hs
end

local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (observed " .. tostring(observed or "none") .. ")"
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")
local progressing = condition(conditions, "Progressing")
local degraded = condition(conditions, "Degraded")
local invalid = condition(conditions, "InvalidSpec")

if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = "InvalidSpec: " .. say(invalid, "the operator cannot accept this spec")
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = "InvalidSpec: " .. say(ready, "the operator cannot accept this spec")
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded, "Degraded")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready, "Ready")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = say(progressing, "Progressing")
  return hs
end
hs.status = "Progressing"
hs.message = say(ready, "Waiting for the Ready condition")
return hs
