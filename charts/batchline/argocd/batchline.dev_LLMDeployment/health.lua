-- Argo CD health of a batchline.dev/v1alpha1 LLMDeployment, from the conditions the operator writes.
-- Uses no standard library (not even string), so it runs without useOpenLibs.
-- Order matters: a status older than the spec says nothing about the spec, so it is only Progressing;
-- a problem (Degraded, failed build) outranks work in progress; Healthy needs Ready=True.
local function find(conditions, ctype)
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local hs = {}
local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local model = find(status.conditions, "ModelReady")
local degraded = find(status.conditions, "Degraded")
local progressing = find(status.conditions, "Progressing")

if model ~= nil and model.status == "False" and model.reason == "BuildFailed" then
  hs.status = "Degraded"
  hs.message = describe(model)
elseif degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
elseif model ~= nil and model.status == "False" and model.reason == "Building" then
  hs.status = "Progressing"
  hs.message = describe(model)
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
elseif ready ~= nil and ready.status == "True"
    and (ready.observedGeneration == nil or generation == nil or ready.observedGeneration >= generation) then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready ~= nil then
  hs.status = "Progressing"
  hs.message = describe(ready)
else
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
end
return hs
