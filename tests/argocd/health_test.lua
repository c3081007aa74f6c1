-- Runs deploy/argocd/health.lua on sample objects, as Argo CD would. Prints the plain
-- closing line "N passed, N failed" and exits non-zero on a failure.
local script = arg[1] or "deploy/argocd/health.lua"
local function health(obj)
  local chunk = assert(loadfile(script, "t", setmetatable({ obj = obj }, { __index = _G })))
  return chunk()
end

local function condition(type_, status, generation, message, reason)
  return { type = type_, status = status, reason = reason or "R", message = message or "",
           lastTransitionTime = "2026-11-27T10:00:00Z", observedGeneration = generation }
end

-- A Release's conditions while its rollouts are in `reason` (what the operator writes).
local function rollout(generation, reason, message)
  local stalled = reason == "RolledBack"
  return {
    condition("Ready", "False", generation, message, reason),
    condition("Reconciling", stalled and "False" or "True", generation, stalled and "" or message, reason),
    condition("Stalled", stalled and "True" or "False", generation, stalled and message or "", reason),
  }
end

local function object(generation, observed, conditions)
  return { metadata = { name = "shop", generation = generation },
           status = conditions and { observedGeneration = observed, conditions = conditions } or nil }
end

local cases = {
  { "no status yet", object(1, nil, nil), "Progressing" },
  { "ready", object(2, 2, { condition("Ready", "True", 2, "serving"), condition("Stalled", "False", 2) }), "Healthy", "serving" },
  { "stalled", object(3, 3, { condition("Ready", "False", 3), condition("Stalled", "True", 3, "Bundle web-2 does not exist") }),
    "Degraded", "Bundle web-2 does not exist" },
  { "status from an older generation", object(4, 3, { condition("Ready", "True", 3, "serving") }), "Progressing" },
  { "old stalled condition on a new spec", object(5, 5, { condition("Ready", "False", 5, "waiting for Bundle web-3"), condition("Stalled", "True", 4, "old") }),
    "Progressing", "waiting for Bundle web-3" },
  { "reconciling", object(1, 1, { condition("Ready", "False", 1), condition("Reconciling", "True", 1) }), "Progressing" },
  { "rollout advancing", object(2, 2, rollout(2, "RolloutProgressing", "production: rolling out, 50% of devices on 1.0.2")),
    "Progressing", "production: rolling out, 50% of devices on 1.0.2" },
  { "rollout paused", object(2, 2, rollout(2, "RolloutPaused", "production: paused at 50% of devices on 1.0.2")),
    "Suspended", "production: paused at 50% of devices on 1.0.2" },
  { "rolled back", object(2, 2, rollout(2, "RolledBack", "production: rolled back from 1.0.2 to 1.0.1")),
    "Degraded", "production: rolled back from 1.0.2 to 1.0.1" },
  { "paused status from an older generation", object(3, 3, { condition("Ready", "False", 3, "waiting for Bundle web-3"),
      condition("Reconciling", "True", 2, "paused", "RolloutPaused") }), "Progressing", "waiting for Bundle web-3" },
}

local passed, failed = 0, 0
for _, case in ipairs(cases) do
  local name, obj, want_status, want_message = case[1], case[2], case[3], case[4]
  local got = health(obj)
  if got.status == want_status and (want_message == nil or got.message == want_message) then
    passed = passed + 1
  else
    failed = failed + 1
    print(string.format("FAIL %s: got %s (%s), want %s (%s)", name, got.status, tostring(got.message), want_status, tostring(want_message)))
  end
end
print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then os.exit(1) end
