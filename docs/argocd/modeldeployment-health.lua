-- Argo CD health check for canaryml.dev/ModelDeployment (docs/gitops.md says why each case maps
-- as it does). Argo CD runs it with the live object as `obj` and reads `status` and `message`.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function holds(condition)
  return condition ~= nil and condition.status == "True"
end

-- JSON numbers reach the script as floats: 20, never "20.0".
local function whole(number)
  return string.format("%d", math.floor(number or 0))
end

local function text(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. whole(generation)
  return hs
end

local conditions = status.conditions
-- An explicit failure first: the spec cannot be served (InvalidSpec, phase Failed), a child it
-- needs belongs to another resource (ChildConflict), the canary was rolled back (Stalled:
-- RolledBack), or the analysis is really stuck (Stalled: MetricsUnavailable, or
-- AnalysisInconclusive past progressDeadline): a person must act. A rollout whose analyses are
-- merely held (a drift window warming up) is Progressing, below.
for _, kind in ipairs({ "Degraded", "Stalled" }) do
  local condition = find(conditions, kind)
  if holds(condition) then
    hs.status = "Degraded"
    hs.message = (condition.reason or kind) .. ": " .. text(condition, kind .. "=True")
    return hs
  end
end

-- The canary the spec asks for was rolled back: what Git says is not what runs. The stable
-- model keeps serving; a new canary (or none) in the spec makes it healthy again.
if status.phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = text(find(conditions, "RolledBack"),
    "canary " .. (status.canaryVersion or "?") .. " rolled back")
  return hs
end

if status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = text(find(conditions, "Progressing"), "rollout paused")
  return hs
end

-- spec.canary.approval: every step passed and the promotion waits for a person's approval
-- (`canaryml promote`), as Argo Rollouts' pause step does; the analyses go on meanwhile.
local approval = find(conditions, "Approved")
if status.phase == "Progressing" and approval ~= nil and approval.status == "False"
    and approval.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = text(approval, "the promotion awaits approval")
  return hs
end

-- serving.replicas: 0 on purpose: nothing is broken, nothing serves (as a suspended CronJob).
local ready = find(conditions, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = text(ready, "scaled to zero")
  return hs
end

-- A rollout in flight, a promotion finishing, a stable model rolling out: on its way.
local progressing = find(conditions, "Progressing")
local reconciling = find(conditions, "Reconciling")
if holds(progressing) then
  hs.status = "Progressing"
  hs.message = text(progressing, "rolling out")
  if status.phase == "Progressing" and status.canaryVersion ~= nil then
    hs.message = "canary " .. status.canaryVersion .. " at " .. whole(status.canaryWeight) ..
        "%: " .. hs.message
  end
  return hs
end
if holds(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "waiting for the model Deployments to roll out")
  return hs
end

if holds(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "stable model " .. (status.stableVersion or "?") .. " serving")
  return hs
end

-- Not ready and nothing said to be in progress (a status written by another version).
hs.status = "Progressing"
hs.message = text(ready, "waiting for the stable model to be served")
return hs
