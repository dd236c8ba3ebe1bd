//! [`PresenceBackend::Redis`](super::PresenceBackend): a cluster's presence
//! in Redis, aggregated by one script, atomically.
//!
//! # Keys
//! - `vela:presence:{account}`, a hash: `d:{device}` ->
//!   `status,calls,expires,lease,active` per device (its own status as a
//!   [`Status::rank`], the rooms it is in, its heartbeat deadline, its
//!   node's lease on its rooms, when it was last heard from; times are
//!   Redis's clock in ms), `s` -> the account's published status (a rank),
//!   `a` -> when it was last active, `v` -> the version of the last change.
//!   It expires by itself a minute after its last device is gone.
//! - `vela:presence:due`, a sorted set of `{account}:{device}` scored by
//!   when the device goes offline unless heard from (its heartbeat
//!   deadline, or its node's room lease while in a room).
//!
//! # The script
//! [`SCRIPT`] applies one input of a device (or a batch of expiries) and
//! recomputes the account's status from its present devices with the
//! tracker's rule (the highest rank wins; in a room is `InCall`), stores
//! it and returns the previous and the new one: the node that ran it
//! publishes the change, so each change is pushed once. Expiry (`reap`)
//! pops the due devices off the sorted set inside the script: when several
//! nodes reap, each expired device is popped by exactly one, so a device
//! whose node died goes offline after the heartbeat timeout, published
//! once. A device in a room stays present while its node renews the room
//! lease (every `cluster.heartbeat_ms`, for `cluster.node_timeout_ms`);
//! renewing also restores the rooms after Redis lost its data.
//!
//! It reads keys it computes (`reap`), so it needs one Redis (or a primary
//! with replicas), not a Redis Cluster.

use redis::Script;

use crate::domain::ids::{AccountId, DeviceId, now_ms};
use crate::domain::presence::{DeviceStatus, Status};
use crate::services::cluster::Cluster;

/// The presence script. KEYS[1]: the deadlines. ARGV: the account key
/// prefix, the op, the account (for `reap`: how many at most), the
/// device, the heartbeat timeout, the room lease (ms), the op's argument
/// (a status rank for `status`, the room count for `renew`), `1` to
/// version the account's presence anew even if unchanged (its text
/// changed: it is published again).
///
/// Returns `{previous, status, last_active, version}` for an input, and
/// per account that changed `account, previous, status, last_active,
/// version` for `reap`. The version (microseconds, Redis's clock, rising
/// per account) orders the pushes of the changes, whichever node
/// publishes them.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local due, prefix, op = KEYS[1], ARGV[1], ARGV[2]
local timeout, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local IN_CALL, ONLINE = 4, 2
-- A new version even without a change (the status text changed).
local bump = ARGV[8] == '1'

local function parse(v)
  local s, c, e, l, a = string.match(v, '^(%d+),(%d+),(%-?%d+),(%-?%d+),(%-?%d+)$')
  if not s then return nil end
  return {status = tonumber(s), calls = tonumber(c), expires = tonumber(e),
          lease = tonumber(l), active = tonumber(a)}
end
local function in_call(d) return d.calls > 0 and now < d.lease end
local function present(d) return in_call(d) or now < d.expires end
local function rank(d) if in_call(d) then return IN_CALL end return d.status end
local function fresh()
  return {status = ONLINE, calls = 0, expires = now, lease = 0, active = now}
end
local function load(key, dev)
  local v = redis.call('HGET', key, 'd:' .. dev)
  if v then return parse(v) end
  return nil
end
local function due_at(d)
  if d.calls > 0 and d.lease > d.expires then return d.lease end
  return d.expires
end
local function save(key, account, dev, d)
  redis.call('HSET', key, 'd:' .. dev,
    string.format('%d,%d,%d,%d,%d', d.status, d.calls, d.expires, d.lease, d.active))
  local last = tonumber(redis.call('HGET', key, 'a') or '0')
  if d.active > last then redis.call('HSET', key, 'a', string.format('%d', d.active)) end
  redis.call('ZADD', due, due_at(d), account .. ':' .. dev)
  redis.call('PEXPIRE', key, timeout + lease + 60000)
end
local function forget(key, account, dev)
  redis.call('HDEL', key, 'd:' .. dev)
  redis.call('ZREM', due, account .. ':' .. dev)
end
local function gone_now(key)
  redis.call('HSET', key, 'a', string.format('%d', now))
end
local function recompute(key)
  local fields = redis.call('HGETALL', key)
  local best, devices = 0, 0
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'd:' then
      devices = devices + 1
      local d = parse(fields[i + 1])
      if d and present(d) and rank(d) > best then best = rank(d) end
    end
  end
  local prev = tonumber(redis.call('HGET', key, 's') or '0')
  local active = tonumber(redis.call('HGET', key, 'a') or '0')
  local version = tonumber(redis.call('HGET', key, 'v') or '0')
  if best ~= prev or bump then
    version = math.max(now_us, version + 1)
    redis.call('HSET', key, 's', best, 'v', string.format('%d', version))
  end
  if devices == 0 and best == 0 then
    -- Kept a while for its version (and last active), then gone.
    redis.call('PEXPIRE', key, timeout + lease + 60000)
  end
  return prev, best, active, version
end

if op == 'reap' then
  local out = {}
  local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, m in ipairs(members) do
    redis.call('ZREM', due, m)
    local account, dev = string.match(m, '^(%-?%d+):(%-?%d+)$')
    if account then
      local key = prefix .. account
      local d = load(key, dev)
      if d and present(d) then
        redis.call('ZADD', due, due_at(d), m)
      elseif d then
        redis.call('HDEL', key, 'd:' .. dev)
        local prev, status, active, version = recompute(key)
        if prev ~= status then
          table.insert(out, tonumber(account))
          table.insert(out, prev)
          table.insert(out, status)
          table.insert(out, active)
          table.insert(out, version)
        end
      end
    end
  end
  return out
end

local account, dev = ARGV[3], ARGV[4]
local key = prefix .. account
if op == 'activity' or op == 'status' then
  local d = load(key, dev) or fresh()
  d.expires = now + timeout
  d.active = now
  if op == 'status' then d.status = tonumber(ARGV[7]) end
  save(key, account, dev, d)
elseif op == 'call_started' then
  local d = load(key, dev) or fresh()
  d.calls = d.calls + 1
  d.lease = now + lease
  d.active = now
  save(key, account, dev, d)
elseif op == 'call_ended' then
  local d = load(key, dev)
  if d then
    if d.calls > 0 then d.calls = d.calls - 1 end
    d.active = now
    if present(d) then
      save(key, account, dev, d)
    else
      forget(key, account, dev)
      gone_now(key)
    end
  end
elseif op == 'renew' then
  local d = load(key, dev) or fresh()
  d.calls = tonumber(ARGV[7])
  d.lease = now + lease
  save(key, account, dev, d)
elseif op == 'removed' then
  if load(key, dev) then
    forget(key, account, dev)
    gone_now(key)
  end
elseif op == 'account_removed' then
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'd:' then forget(key, account, string.sub(f, 3)) end
  end
  if #fields > 0 then gone_now(key) end
else
  return redis.error_reply('unknown presence op ' .. op)
end
local prev, status, active, version = recompute(key)
return {prev, status, active, version}
";

/// An input, as the script takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Heard from the device.
    Activity,
    /// The device set its own status.
    Status(DeviceStatus),
    /// The device entered a room.
    CallStarted,
    /// The device left a room.
    CallEnded,
    /// This node still holds the device in `n` rooms.
    Renew(u32),
    /// The device was signed out.
    Removed,
    /// The account was disabled.
    AccountRemoved,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Activity => "activity",
            Op::Status(_) => "status",
            Op::CallStarted => "call_started",
            Op::CallEnded => "call_ended",
            Op::Renew(_) => "renew",
            Op::Removed => "removed",
            Op::AccountRemoved => "account_removed",
        }
    }

    fn arg(self) -> i64 {
        match self {
            Op::Status(s) => i64::from(Status::from(s).rank()),
            Op::Renew(n) => i64::from(n),
            _ => 0,
        }
    }
}

/// An account's status as the script left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whose.
    pub account: AccountId,
    /// Before.
    pub previous: Status,
    /// Now.
    pub status: Status,
    /// When it was last active (ms since the epoch, Redis's clock).
    pub last_active: i64,
    /// The version of the account's status (rises with each change).
    pub version: u64,
}

impl Outcome {
    /// Whether the status changed (to be published).
    pub fn changed(&self) -> bool {
        self.previous != self.status
    }
}

/// The shared presence of a cluster: the script and the timings.
#[derive(Debug, Clone)]
pub struct SharedPresence {
    cluster: Cluster,
    script: Script,
    prefix: String,
    due: String,
    timeout_ms: u64,
    lease_ms: u64,
}

impl SharedPresence {
    /// Devices expire `timeout_ms` after they were last heard from, and
    /// leave their rooms `lease_ms` after their node last renewed them.
    pub fn new(cluster: Cluster, timeout_ms: u64, lease_ms: u64) -> Self {
        SharedPresence {
            cluster,
            script: Script::new(SCRIPT),
            prefix: Cluster::key(&["presence", ""]),
            due: Cluster::key(&["presence", "due"]),
            timeout_ms,
            lease_ms,
        }
    }

    fn account_key(&self, account: AccountId) -> String {
        format!("{}{}", self.prefix, account.0)
    }

    /// Applies one input; the account's status before and after. With
    /// `republish`, the version rises even if the status stays.
    pub async fn apply(
        &self,
        account: AccountId,
        device: DeviceId,
        op: Op,
        republish: bool,
    ) -> redis::RedisResult<Outcome> {
        let mut redis = self.cluster.redis();
        let (previous, status, last_active, version): (i64, i64, i64, i64) = self
            .script
            .key(&self.due)
            .arg(&self.prefix)
            .arg(op.name())
            .arg(account.0)
            .arg(device.0)
            .arg(self.timeout_ms)
            .arg(self.lease_ms)
            .arg(op.arg())
            .arg(u8::from(republish))
            .invoke_async(&mut redis)
            .await?;
        Ok(Outcome {
            account,
            previous: Status::from_rank(previous),
            status: Status::from_rank(status),
            last_active,
            version: u64::try_from(version).unwrap_or(0),
        })
    }

    /// Expires up to `limit` devices that are due; the accounts whose
    /// status changed (each popped by this node alone).
    pub async fn reap(&self, limit: usize) -> redis::RedisResult<Vec<Outcome>> {
        let mut redis = self.cluster.redis();
        let flat: Vec<i64> = self
            .script
            .key(&self.due)
            .arg(&self.prefix)
            .arg("reap")
            .arg(limit)
            .arg(0)
            .arg(self.timeout_ms)
            .arg(self.lease_ms)
            .arg(0)
            .arg(0)
            .invoke_async(&mut redis)
            .await?;
        Ok(flat
            .chunks_exact(5)
            .map(|c| Outcome {
                account: AccountId(c[0]),
                previous: Status::from_rank(c[1]),
                status: Status::from_rank(c[2]),
                last_active: c[3],
                version: u64::try_from(c[4]).unwrap_or(0),
            })
            .collect())
    }

    /// The published statuses of `accounts`, in order.
    pub async fn statuses(&self, accounts: &[AccountId]) -> redis::RedisResult<Vec<Status>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for a in accounts {
            pipe.cmd("HGET").arg(self.account_key(*a)).arg("s");
        }
        let mut redis = self.cluster.redis();
        let ranks: Vec<Option<i64>> = pipe.query_async(&mut redis).await?;
        Ok(ranks
            .into_iter()
            .map(|r| Status::from_rank(r.unwrap_or(0)))
            .collect())
    }

    /// The own statuses of `devices` of `account`, in order.
    pub async fn device_statuses(
        &self,
        account: AccountId,
        devices: &[DeviceId],
    ) -> redis::RedisResult<Vec<Status>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.account_key(account));
        for d in devices {
            cmd.arg(format!("d:{}", d.0));
        }
        let mut redis = self.cluster.redis();
        let values: Vec<Option<String>> = cmd.query_async(&mut redis).await?;
        let now = now_ms();
        Ok(values
            .iter()
            .map(|v| {
                v.as_deref()
                    .map_or(Status::Offline, |v| device_status(v, now))
            })
            .collect())
    }
}

/// A device's own status from its entry (`status,calls,expires,lease,active`)
/// at `now`, as the script judges it.
fn device_status(entry: &str, now: i64) -> Status {
    let f: Vec<i64> = entry.split(',').filter_map(|x| x.parse().ok()).collect();
    let [status, calls, expires, lease, _] = f[..] else {
        return Status::Offline;
    };
    if calls > 0 && now < lease {
        Status::InCall
    } else if now < expires {
        Status::from_rank(status)
    } else {
        Status::Offline
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::services::cluster::NodeIdentity;

    const A: AccountId = AccountId(1);
    const PHONE: DeviceId = DeviceId(10);
    const DESK: DeviceId = DeviceId(11);

    async fn shared(redis: &vela_testkit::Redis, timeout_ms: u64, lease_ms: u64) -> SharedPresence {
        let config = vela_config::ClusterConfig {
            redis_url: redis.url(),
            ..vela_config::ClusterConfig::default()
        };
        let node = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().expect("addr"));
        let cluster = Cluster::connect(&config, node).await.expect("connect");
        SharedPresence::new(cluster, timeout_ms, lease_ms)
    }

    fn pair(o: Outcome) -> (Status, Status) {
        (o.previous, o.status)
    }

    #[tokio::test]
    async fn the_script_aggregates_devices_by_precedence() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let p = shared(&redis, 60_000, 60_000).await;
            let away = Op::Status(DeviceStatus::Away);
            assert_eq!(
                pair(p.apply(A, PHONE, away, false).await.unwrap()),
                (Status::Offline, Status::Away)
            );
            // online > away; the same input again changes nothing.
            assert_eq!(
                pair(p.apply(A, DESK, Op::Activity, false).await.unwrap()),
                (Status::Away, Status::Online)
            );
            let same = p.apply(A, DESK, Op::Activity, false).await.unwrap();
            assert!(!same.changed());
            // A text change is published anew: a new version, same status.
            let text = p.apply(A, DESK, Op::Activity, true).await.unwrap();
            assert!(!text.changed() && text.version > same.version);
            let dnd = Op::Status(DeviceStatus::Dnd);
            assert_eq!(
                pair(p.apply(A, DESK, dnd, false).await.unwrap()),
                (Status::Online, Status::Dnd)
            );
            assert_eq!(
                pair(p.apply(A, PHONE, Op::CallStarted, false).await.unwrap()),
                (Status::Dnd, Status::InCall)
            );
            assert_eq!(
                p.device_statuses(A, &[PHONE, DESK, DeviceId(99)])
                    .await
                    .unwrap(),
                vec![Status::InCall, Status::Dnd, Status::Offline]
            );
            assert_eq!(
                pair(p.apply(A, PHONE, Op::CallEnded, false).await.unwrap()),
                (Status::InCall, Status::Dnd)
            );
            assert_eq!(
                pair(p.apply(A, DESK, Op::Removed, false).await.unwrap()),
                (Status::Dnd, Status::Away)
            );
            assert_eq!(
                p.statuses(&[A, AccountId(2)]).await.unwrap(),
                vec![Status::Away, Status::Offline]
            );
            let before = p.apply(A, PHONE, Op::Activity, false).await.unwrap();
            let gone = p.apply(A, PHONE, Op::AccountRemoved, false).await.unwrap();
            assert_eq!(pair(gone), (Status::Away, Status::Offline));
            assert!(gone.version > before.version);
            // Back after every device was gone: the version still rises.
            let back = p.apply(A, PHONE, Op::Activity, false).await.unwrap();
            assert!(back.changed() && back.version > gone.version);
            p.apply(A, PHONE, Op::Removed, false).await.unwrap();
            assert!((gone.last_active - now_ms()).abs() < 5_000);
            assert_eq!(p.statuses(&[A]).await.unwrap(), vec![Status::Offline]);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn expiry_is_popped_once_among_nodes_and_rooms_hold_while_renewed() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (n1, n2) = (
                shared(&redis, 300, 400).await,
                shared(&redis, 300, 400).await,
            );
            n1.apply(A, PHONE, Op::Activity, false).await.unwrap();
            n2.apply(AccountId(2), DESK, Op::CallStarted, false)
                .await
                .unwrap();
            assert!(n1.reap(100).await.unwrap().is_empty(), "nothing due yet");
            tokio::time::sleep(Duration::from_millis(350)).await;
            // Both nodes reap at once: the phone's expiry is published once.
            let (r1, r2) = tokio::join!(n1.reap(100), n2.reap(100));
            let all: Vec<Outcome> = r1.unwrap().into_iter().chain(r2.unwrap()).collect();
            assert_eq!(all.len(), 1, "{all:?}");
            assert_eq!((all[0].account, all[0].status), (A, Status::Offline));
            // The room lease, renewed, keeps the desk in its call...
            n2.apply(AccountId(2), DESK, Op::Renew(1), false)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(n1.reap(100).await.unwrap().is_empty());
            assert_eq!(
                n1.statuses(&[AccountId(2)]).await.unwrap(),
                vec![Status::InCall]
            );
            // ...until its node stops renewing (it died).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let gone = n1.reap(100).await.unwrap();
            assert_eq!(gone.len(), 1);
            assert_eq!(
                (gone[0].previous, gone[0].status),
                (Status::InCall, Status::Offline)
            );
        })
        .await
        .expect("timed out");
    }
}
