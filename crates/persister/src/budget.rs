//! How many bytes one reply from the group may carry: a read or claim changes the group in Redis before
//! its reply crosses the network, so the reply must be small enough to arrive within `REDIS_TIMEOUT_MS`
//! (see `group.rs`).

/// How many bytes (entry ids, field names and values) one reply of [`read`](crate::group::read) or [`autoclaim`](crate::claim::autoclaim) may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyBudget {
    /// The budget (`PERSISTER_READ_BYTES`).
    pub bytes: usize,
    /// The largest entry expected: `MAX_BODY_BYTES` and its envelope, or — for a read of new entries —
    /// the reader's expectation from what it has read ([`ReplyBudget::expecting`]). A `COUNT` is what is
    /// left of the budget over this (in the scripts, over the largest entry seen in the reply when that
    /// is larger).
    pub entry_bytes: usize,
}

/// An entry's fields besides its payload (id, received-at, request id, version) take far less than this.
const ENVELOPE_BYTES: usize = 4096;

impl ReplyBudget {
    /// The same budget for entries expected to be at most `entry_bytes` (at least one byte).
    pub fn expecting(self, entry_bytes: usize) -> Self {
        Self {
            entry_bytes: entry_bytes.max(1),
            ..self
        }
    }

    /// The `COUNT` (at most `max`, at least 1) whose reply fits the budget when no entry is larger than
    /// `entry_bytes`.
    pub fn count(self, max: usize) -> usize {
        (self.bytes / self.entry_bytes.max(1)).clamp(1, max.max(1))
    }

    /// `PERSISTER_READ_BYTES`, and entries of at most `MAX_BODY_BYTES` of payload plus their envelope.
    pub fn from_settings(settings: &service::Settings) -> Self {
        Self {
            bytes: settings.persister_read_bytes,
            entry_bytes: settings.max_body_bytes + ENVELOPE_BYTES,
        }
    }
}

impl Default for ReplyBudget {
    fn default() -> Self {
        Self::from_settings(&service::Settings::defaults())
    }
}

/// The chunking both bounded scripts share: `chunk()` is the next `COUNT` (0: stop), `add(entry)` counts
/// an entry read. A lone entry larger than the budget still comes back, alone: it must be stored too.
pub(crate) const BUDGET_LUA: &str = r"
local left, budget, largest = tonumber(ARGV[#ARGV - 2]), tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local out, used = {}, 0
local function chunk()
  if left <= 0 then return 0 end
  local n = math.floor((budget - used) / largest)
  if n < 1 then
    if #out > 0 then return 0 end
    n = 1
  end
  return math.min(n, left)
end
local function add(e)
  local size = #e[1]
  if e[2] then for _, v in ipairs(e[2]) do size = size + #v end end
  used = used + size
  if size > largest then largest = size end
  out[#out + 1] = e
  left = left - 1
end
";
