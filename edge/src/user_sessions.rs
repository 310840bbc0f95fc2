//! One live session per user per edge, agreed between the edge's workers.
//!
//! A table from user id to the session that holds it, shared by every worker and touched only
//! when a session starts (its `Hello` is accepted) or ends: never on the shake path. A session
//! that claims a user who already holds one *supersedes* it: the older session's worker is told
//! (its inbox, then its wake-up), and closes it with `SESSION_SUPERSEDED`. A worker checks its
//! inbox with one atomic load per turn while nothing is waiting.
//!
//! Superseding is budgeted per user (a token bucket, `limits.user_supersedes_per_min` and
//! `limits.user_supersede_burst`): a phone that reconnects after a network change supersedes
//! its stale session at once, but a user who keeps many connections cycling through the
//! session cannot: past the budget the *newcomer* is refused with `SESSION_IN_USE` and the
//! live session stays. Otherwise each takeover would let a cheater's freshly connected phone
//! send the shakes it had queued, and its chance would still grow with its connections. The
//! budget lives while the user has a live session; a user with none starts afresh.
//!
//! A user's *shake* bucket outlives its session, though, until it would have refilled (two
//! seconds at the default rate): a session that follows a closed one starts with the bucket
//! the last one left, not a full one. Before, each new session brought a fresh burst, and ten
//! connect-burst-close cycles a second gave one user about twenty times an honest phone's
//! shakes; an honest phone that leaves and comes back loses nothing by it.
//!
//! Sessions are named by a serial drawn from one counter, so a late notice for a connection
//! slot that has since been reused names a serial nobody holds and is ignored.
//!
//! The table also keeps, for operators and risk control, each live user's count of sessions
//! started and superseded, and the users the allocator limited (mirrored here when a worker
//! hears of them; each worker also keeps its own copy for the shake path). Bounds: one entry
//! per live session (at most the edge's phone limit), at most [`MAX_RESTING_USERS`] resting
//! shake buckets (swept of refilled ones at most once a second; past the bound a user starts
//! with a full bucket, as before) and at most [`MAX_LIMITED_USERS`] limited users, swept as
//! their limits end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bucket::{Rate, TokenBucket};

/// Limited users remembered per worker and in the shared mirror.
pub const MAX_LIMITED_USERS: usize = 65_536;
/// Shake buckets of users whose session ended, kept until they refill (about 40 bytes each).
pub const MAX_RESTING_USERS: usize = 262_144;
/// The resting buckets are swept at most this often, microseconds (a sweep is a pass over
/// the table under its lock).
const SWEEP_EVERY_US: u64 = 1_000_000;

/// How a superseded session is reached: the worker and the connection slot it lives in.
#[derive(Debug, Clone, Copy)]
pub struct Closer {
    /// The owning worker.
    pub worker: u16,
    /// The connection's slot in that worker.
    pub conn: usize,
}

/// A superseded event-loop session, as its worker's inbox holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded {
    /// The connection's slot.
    pub conn: usize,
    /// The session's serial (compare before closing: the slot may be another session's now).
    pub serial: u64,
}

#[derive(Debug)]
struct Holder {
    serial: u64,
    worker: u16,
    closer: Closer,
    /// Sessions this user started on this edge while holding one (and the first).
    sessions_started: u32,
    superseded: u32,
    /// New sessions refused because the user's supersede budget was spent.
    refused: u32,
    /// The user's supersede budget.
    supersedes: TokenBucket,
}

/// What became of a session's claim on its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The user had no live session on this edge.
    Fresh,
    /// The user's older session is told to close (`SESSION_SUPERSEDED`).
    Superseded,
    /// The user's supersede budget is spent: the new session must close (`SESSION_IN_USE`);
    /// the live one stays.
    Refused,
}

#[derive(Default)]
struct Inbox {
    waiting: AtomicBool,
    queue: Mutex<Vec<Superseded>>,
    wake: Option<Box<dyn Fn() + Send + Sync>>,
}

/// What the edge knows of one user, for `GET /users/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UserReport {
    /// The user.
    pub user_id: u64,
    /// The worker serving the user's live session, if there is one.
    pub live_session_worker: Option<u16>,
    /// Sessions started since the user last had none.
    pub sessions_started: u32,
    /// Of those, how many a newer one superseded.
    pub sessions_superseded: u32,
    /// New sessions refused because the user replaced sessions too often.
    pub sessions_refused: u32,
    /// Until when (Unix ms) the allocator asked this edge to refuse the user's shakes.
    pub limited_until_ms: Option<u64>,
}

/// The edge's table of live sessions by user.
pub struct UserSessions {
    supersede_rate: Rate,
    /// A phone's shake bucket's rate (every worker's is the same).
    phone_rate: Rate,
    live: Mutex<HashMap<u64, Holder>>,
    /// The shake buckets of users whose session ended, until they refill.
    resting: Mutex<HashMap<u64, TokenBucket>>,
    /// When `resting` was last swept (the edge's monotonic microseconds).
    swept_us: AtomicU64,
    limited: Mutex<HashMap<u64, u64>>,
    inboxes: Vec<Inbox>,
    serials: AtomicU64,
}

impl std::fmt::Debug for UserSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSessions").field("workers", &self.inboxes.len()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked while holding the lock left the table consistent (every
    // update is one insert or remove): carry on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UserSessions {
    /// A table for `workers` workers; `wakers[i]` wakes worker `i` (missing ones wake no one);
    /// each user may supersede sessions at `supersede_rate`; phones' shake buckets refill at
    /// `phone_rate`.
    pub fn new(
        workers: usize,
        mut wakers: Vec<Box<dyn Fn() + Send + Sync>>,
        supersede_rate: Rate,
        phone_rate: Rate,
    ) -> Arc<Self> {
        wakers.resize_with(workers, || Box::new(|| {}));
        let inboxes =
            wakers.into_iter().map(|wake| Inbox { wake: Some(wake), ..Inbox::default() }).collect();
        Arc::new(Self {
            supersede_rate,
            phone_rate,
            live: Mutex::default(),
            resting: Mutex::default(),
            swept_us: AtomicU64::new(0),
            limited: Mutex::default(),
            inboxes,
            serials: AtomicU64::new(1),
        })
    }

    /// A fresh session serial.
    pub fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    /// Session `serial` of `user_id`, on `worker`, claims the user at `now_us` (the edge's
    /// monotonic clock). Its predecessor, if any, is told to close, unless the user's supersede
    /// budget is spent: then the claim is refused and nothing changes.
    pub fn claim(
        &self,
        user_id: u64,
        serial: u64,
        worker: u16,
        closer: Closer,
        now_us: u64,
    ) -> Claim {
        let old = {
            let mut live = lock(&self.live);
            let held = match live.get_mut(&user_id) {
                None => Holder {
                    serial,
                    worker,
                    closer,
                    sessions_started: 1,
                    superseded: 0,
                    refused: 0,
                    supersedes: TokenBucket::full(self.supersede_rate, now_us),
                },
                Some(h) => {
                    if h.supersedes.try_take(self.supersede_rate, now_us).is_err() {
                        h.refused = h.refused.saturating_add(1);
                        return Claim::Refused;
                    }
                    Holder {
                        serial,
                        worker,
                        closer,
                        sessions_started: h.sessions_started.saturating_add(1),
                        superseded: h.superseded.saturating_add(1),
                        refused: h.refused,
                        supersedes: h.supersedes,
                    }
                }
            };
            live.insert(user_id, held)
        };
        let Some(old) = old else { return Claim::Fresh };
        let Closer { worker, conn } = old.closer;
        if let Some(inbox) = self.inboxes.get(usize::from(worker)) {
            lock(&inbox.queue).push(Superseded { conn, serial: old.serial });
            inbox.waiting.store(true, Ordering::Release);
            if let Some(wake) = &inbox.wake {
                wake();
            }
        }
        Claim::Superseded
    }

    /// Session `serial` of `user_id` ended at `now_us`, its phone's shake bucket as it left it
    /// (`None`: it never had one); the user is free unless a newer session holds it, and its
    /// bucket rests until it refills ([`Self::take_resting`]).
    pub fn release(&self, user_id: u64, serial: u64, bucket: Option<TokenBucket>, now_us: u64) {
        {
            let mut live = lock(&self.live);
            if live.get(&user_id).is_none_or(|h| h.serial != serial) {
                return;
            }
            live.remove(&user_id);
        }
        let Some(bucket) = bucket.filter(|b| !b.is_full(self.phone_rate, now_us)) else {
            return;
        };
        let mut resting = lock(&self.resting);
        if resting.len() >= MAX_RESTING_USERS
            && now_us.saturating_sub(self.swept_us.load(Ordering::Relaxed)) >= SWEEP_EVERY_US
        {
            self.swept_us.store(now_us, Ordering::Relaxed);
            let rate = self.phone_rate;
            resting.retain(|_, b| !b.is_full(rate, now_us));
        }
        // Past the bound even so: this user's next session starts full, as every one did
        // before buckets outlived sessions.
        if resting.len() < MAX_RESTING_USERS {
            resting.insert(user_id, bucket);
        }
    }

    /// The shake bucket `user_id`'s last session left, if it has not refilled by `now_us`: the
    /// bucket its new session starts with (taken: it is the session's now).
    pub fn take_resting(&self, user_id: u64, now_us: u64) -> Option<TokenBucket> {
        lock(&self.resting).remove(&user_id).filter(|b| !b.is_full(self.phone_rate, now_us))
    }

    /// Users whose shake bucket rests (their session ended, the bucket not yet refilled).
    pub fn resting(&self) -> usize {
        lock(&self.resting).len()
    }

    /// Sessions of `worker` superseded since the last call (one atomic load when none).
    pub fn take_superseded(&self, worker: u16) -> Vec<Superseded> {
        let Some(inbox) = self.inboxes.get(usize::from(worker)) else { return Vec::new() };
        if !inbox.waiting.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&inbox.queue))
    }

    /// Users with a live session.
    pub fn live(&self) -> usize {
        lock(&self.live).len()
    }

    /// The allocator limited `user_ids` until `until_ms` (the mirror operators read).
    pub fn note_limited(&self, user_ids: &[u64], until_ms: u64, now_ms: u64) {
        let mut limited = lock(&self.limited);
        if limited.len() + user_ids.len() > MAX_LIMITED_USERS {
            limited.retain(|_, until| *until > now_ms);
        }
        for &user in user_ids {
            if limited.len() >= MAX_LIMITED_USERS && !limited.contains_key(&user) {
                break;
            }
            limited.insert(user, until_ms);
        }
    }

    /// What the edge knows of `user_id` at `now_ms`.
    pub fn report(&self, user_id: u64, now_ms: u64) -> UserReport {
        let (worker, started, superseded, refused) =
            lock(&self.live).get(&user_id).map_or((None, 0, 0, 0), |h| {
                (Some(h.worker), h.sessions_started, h.superseded, h.refused)
            });
        let limited_until_ms =
            lock(&self.limited).get(&user_id).copied().filter(|until| *until > now_ms);
        UserReport {
            user_id,
            live_session_worker: worker,
            sessions_started: started,
            sessions_superseded: superseded,
            sessions_refused: refused,
            limited_until_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Two supersedes in a burst, then one a minute.
    fn rate() -> Rate {
        Rate::new(1.0 / 60.0, 2.0)
    }

    /// Ten shakes a second, twenty at once.
    fn phone_rate() -> Rate {
        Rate::new(10.0, 20.0)
    }

    fn table() -> (Arc<UserSessions>, Arc<AtomicUsize>) {
        let woken = Arc::new(AtomicUsize::new(0));
        let wakers: Vec<Box<dyn Fn() + Send + Sync>> = (0..2)
            .map(|_| {
                let woken = woken.clone();
                Box::new(move || {
                    woken.fetch_add(1, Ordering::Relaxed);
                }) as Box<dyn Fn() + Send + Sync>
            })
            .collect();
        (UserSessions::new(2, wakers, rate(), phone_rate()), woken)
    }

    fn on(worker: u16, conn: usize) -> Closer {
        Closer { worker, conn }
    }

    #[test]
    fn a_second_session_supersedes_the_first_on_its_own_worker() {
        let (t, woken) = table();
        let first = t.next_serial();
        assert_eq!(t.claim(7, first, 0, on(0, 3), 0), Claim::Fresh);
        assert!(t.take_superseded(0).is_empty());
        let second = t.next_serial();
        assert_eq!(t.claim(7, second, 1, on(1, 9), 0), Claim::Superseded);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(t.take_superseded(0), vec![Superseded { conn: 3, serial: first }]);
        assert!(t.take_superseded(0).is_empty(), "told once");
        assert!(t.take_superseded(1).is_empty());
        // The superseded session's end does not free the user: the newer one holds it.
        t.release(7, first, None, 0);
        let report = t.report(7, 0);
        assert_eq!(report.live_session_worker, Some(1));
        assert_eq!((report.sessions_started, report.sessions_superseded), (2, 1));
        t.release(7, second, None, 0);
        assert_eq!(t.live(), 0);
        assert_eq!(t.report(7, 0).live_session_worker, None);
    }

    #[test]
    fn past_the_budget_the_newcomer_is_refused_and_the_live_session_stays() {
        let (t, _) = table();
        let mut holder = t.next_serial();
        assert_eq!(t.claim(7, holder, 0, on(0, 0), 0), Claim::Fresh);
        for conn in 1..=2 {
            holder = t.next_serial();
            assert_eq!(t.claim(7, holder, 0, on(0, conn), 1_000), Claim::Superseded);
        }
        // The burst is spent: ten more connections in the next half minute are refused.
        for conn in 3..13 {
            let at = 1_000 + conn as u64 * 1_000_000;
            assert_eq!(t.claim(7, t.next_serial(), 1, on(1, conn), at), Claim::Refused);
        }
        let report = t.report(7, 0);
        assert_eq!(report.live_session_worker, Some(0));
        assert_eq!((report.sessions_superseded, report.sessions_refused), (2, 10));
        assert_eq!(t.take_superseded(0).len(), 2);
        assert!(t.take_superseded(1).is_empty(), "no refused session closed anything");
        // A minute on, one more supersede is allowed.
        assert_eq!(t.claim(7, t.next_serial(), 1, on(1, 20), 61_000_000), Claim::Superseded);
        // A user whose sessions all ended starts afresh.
        t.release(7, holder, None, 0);
        let last = t.report(7, 0);
        assert_eq!(last.live_session_worker, Some(1), "the newest session still holds it");
    }

    /// A session that follows a closed one starts with the shake bucket the last one left,
    /// until that bucket would have refilled: closing before each `Hello` buys no fresh burst.
    #[test]
    fn a_users_next_session_starts_with_the_bucket_the_last_one_left() {
        let (t, _) = table();
        let rate = phone_rate();
        // The first session spends its burst of twenty at 1 s.
        let mut bucket = TokenBucket::full(rate, 1_000_000);
        while bucket.try_take(rate, 1_000_000).is_ok() {}
        let first = t.next_serial();
        assert_eq!(t.claim(7, first, 0, on(0, 1), 0), Claim::Fresh);
        t.release(7, first, Some(bucket), 1_000_000);
        assert_eq!(t.resting(), 1);
        // The next one, 100 ms later: the spent bucket, one token refilled, not twenty.
        let second = t.next_serial();
        assert_eq!(t.claim(7, second, 1, on(1, 1), 1_100_000), Claim::Fresh);
        let mut resumed = t.take_resting(7, 1_100_000).expect("the last session's bucket");
        assert!(resumed.try_take(rate, 1_100_000).is_ok());
        assert!(resumed.try_take(rate, 1_100_000).is_err(), "one token, not a fresh burst");
        assert_eq!(t.take_resting(7, 1_100_000), None, "taken once");
        // A bucket that has refilled is not kept (a full one is the same), nor handed back.
        t.release(7, second, Some(resumed), 1_200_000);
        assert_eq!(t.take_resting(7, 4_000_000), None, "refilled 2 s on: a fresh one");
        let full = TokenBucket::full(rate, 5_000_000);
        let third = t.next_serial();
        t.claim(7, third, 0, on(0, 2), 5_000_000);
        t.release(7, third, Some(full), 5_000_000);
        assert_eq!(t.resting(), 0);
        // Other users have none.
        assert_eq!(t.take_resting(8, 1_100_000), None);
    }

    #[test]
    fn the_resting_buckets_are_bounded_and_swept_once_refilled() {
        let (t, _) = table();
        let rate = phone_rate();
        let spent = |at: u64| {
            let mut bucket = TokenBucket::full(rate, at);
            while bucket.try_take(rate, at).is_ok() {}
            bucket
        };
        let rest = |t: &UserSessions, user: u64, at: u64| {
            let serial = t.next_serial();
            t.claim(user, serial, 0, on(0, 0), at);
            t.release(user, serial, Some(spent(at)), at);
        };
        for user in 0..MAX_RESTING_USERS as u64 + 10 {
            rest(&t, user, 0);
        }
        assert_eq!(t.resting(), MAX_RESTING_USERS, "bounded");
        // Three seconds on every bucket has refilled: the next one sweeps them.
        rest(&t, 1 << 40, 3_000_000);
        assert_eq!(t.resting(), 1);
        assert!(t.take_resting(1 << 40, 3_000_000).is_some());
    }

    #[test]
    fn other_users_are_independent() {
        let (t, _) = table();
        for user in 0..100 {
            assert_eq!(t.claim(user, t.next_serial(), 0, on(0, 0), 0), Claim::Fresh);
        }
        assert_eq!(t.live(), 100);
        assert!(t.take_superseded(0).is_empty());
    }

    #[test]
    fn the_limited_mirror_is_bounded_and_forgets_ended_limits() {
        let (t, _) = table();
        let users: Vec<u64> = (0..MAX_LIMITED_USERS as u64 + 10).collect();
        t.note_limited(&users, 1_000, 0);
        assert_eq!(t.report(5, 999).limited_until_ms, Some(1_000));
        assert_eq!(t.report(5, 1_000).limited_until_ms, None);
        assert_eq!(t.report(MAX_LIMITED_USERS as u64 + 5, 0).limited_until_ms, None, "bounded");
        // Once their limits are over, room is made for new ones.
        t.note_limited(&[1 << 40], 5_000, 2_000);
        assert_eq!(t.report(1 << 40, 2_000).limited_until_ms, Some(5_000));
    }
}
