-- Shared by lookup and record (prepended by conn.rs).
-- The key-mark hash's epoch and the marks of the keys a resource's
-- variants are labelled with (`k|<variant>`: space-separated key ids), as a
-- flat field/value list: a lookup reads only the marks that can apply.
local function label_marks(res_flat, key_marks)
  local want = { 'e' }
  for i = 1, #res_flat, 2 do
    if string.sub(res_flat[i], 1, 2) == 'k|' then
      for id in string.gmatch(res_flat[i + 1], '%S+') do
        want[#want + 1] = id
      end
    end
  end
  local got = redis.call('HMGET', key_marks, unpack(want))
  local out = {}
  for i, field in ipairs(want) do
    if got[i] then
      out[#out + 1] = field
      out[#out + 1] = got[i]
    end
  end
  return out
end
