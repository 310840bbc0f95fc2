//! The per-shake decision, sans-IO: round open? phone within its own bucket? edge admission
//! bucket has a token? Time is an argument: `now_us` (monotonic) for buckets, `now_ms` (Unix)
//! for round times and quota expiry.
//!
//! One `Admission` per worker: the edge's quota is split evenly between workers, so no state
//! is shared between threads and nothing takes a lock.

use shake_proto::{RoundInfo, Verdict};

use crate::bucket::{Rate, TokenBucket};

/// Rounds still to open told to a phone right after its `Welcome` (besides the one in it): a
/// phone remembers 16 (`shake_client::session::MAX_ROUNDS`), and forgets the earliest to end.
pub const UPCOMING_ROUNDS_AT_WELCOME: usize = 8;

/// What happens to one shake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Into the batch for the allocator.
    Admit {
        /// The round it was admitted in.
        round_id: u32,
    },
    /// Answered here and now.
    Answer(Verdict),
}

/// Limits that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Each phone's own bucket (anti-spam).
    pub phone: Rate,
    /// This worker's share of the edge's admission while no valid quota is known.
    pub fallback: Rate,
}

/// Offered and admitted shakes since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Shakes in an open round within their phone's own rate (admitted or not by the edge's
    /// bucket). A phone's shakes past its own bucket are not counted: the allocator shares
    /// its quota by this load, and a few phones ignoring slow-down would otherwise pull quota
    /// to their edge, from every other edge's honest phones.
    pub offered: u64,
    /// Shakes admitted.
    pub admitted: u64,
}

#[derive(Debug, Clone, Copy)]
struct Quota {
    round_id: u32,
    rate: Rate,
    valid_until_ms: u64,
}

/// One worker's admission state.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    /// The rounds known, in the order the allocator first named them: the open one, those to
    /// come, and the last to end ([`Admission::forget_ended`] drops the rest, so the shake
    /// path's search for the open round stays a few entries long in a show of hundreds).
    rounds: Vec<RoundInfo>,
    /// The rounds named since the allocator link last came up, while its opening list is still
    /// arriving ([`Admission::on_link_up`]); `None` once it has been settled.
    named_since_link_up: Option<Vec<u32>>,
    /// Each known round's interval (round id, milliseconds), as the allocator set it.
    intervals: Vec<(u32, u32)>,
    /// The interval of the round phones go by now ([`Admission::current_round`]).
    min_interval_ms: u32,
    /// The worker's own pacing under load (0: none), never below the allocator's interval.
    pace_ms: u32,
    /// A start spread of the worker's own for one round (round id, milliseconds), told to
    /// phones when longer than the allocator's ([`Admission::told`]).
    spread_floor: (u32, u32),
    /// The quotas of the open round and of the next (the allocator sends a round's quota a
    /// second before it opens), each for the round it names.
    quotas: [Option<Quota>; 2],
    bucket: TokenBucket,
    load: LoadCounts,
}

impl Admission {
    /// No rounds known yet; the edge bucket starts full at the fallback rate.
    pub fn new(settings: AdmissionSettings, now_us: u64) -> Self {
        Self {
            settings,
            rounds: Vec::new(),
            named_since_link_up: None,
            intervals: Vec::new(),
            min_interval_ms: 100,
            pace_ms: 0,
            spread_floor: (0, 0),
            quotas: [None, None],
            bucket: TokenBucket::full(settings.fallback, now_us),
            load: LoadCounts::default(),
        }
    }

    /// A fresh per-phone bucket.
    pub fn new_phone_bucket(&self, now_us: u64) -> TokenBucket {
        TokenBucket::full(self.settings.phone, now_us)
    }

    /// A per-phone bucket holding `tokens` (a session that replaced a live one).
    pub fn phone_bucket_holding(&self, tokens: f64, now_us: u64) -> TokenBucket {
        TokenBucket::holding(self.settings.phone, tokens, now_us)
    }

    /// The allocator's word on a round at `now_ms` (replaces what was known of it). True if
    /// phones would learn something from it: a round not known before, other times or start
    /// spread, or another interval. A change of phase alone is not news to a phone that knows
    /// the times (it opens and closes by them), and telling 10,000 phones at the opening
    /// instant costs 10,000 packets and their ACKs at the worst moment.
    ///
    /// The interval is the round's: the one in force is that of the round phones go by now
    /// (open, else next, else last). Before, the last `RoundState` to arrive set it, so a
    /// reconnecting worker (told every round, in order) or a command on a later round put the
    /// later round's interval on the open one, undoing the operator's slow-down.
    pub fn on_round_state(&mut self, round: RoundInfo, min_interval_ms: u32, now_ms: u64) -> bool {
        if let Some(named) = &mut self.named_since_link_up {
            named.push(round.round_id);
        }
        // A round over before we heard of it, and not the last to end: the allocator names every
        // round, ended ones too, to a worker that (re)connects, and these were forgotten on
        // purpose. Taken again, each would be told to every phone as news (the broadcast of a
        // whole table, a hundred times over late in a show).
        let unknown = !self.rounds.iter().any(|r| r.round_id == round.round_id);
        let ended_later =
            |r: &RoundInfo| r.ends_at_ms <= now_ms && r.ends_at_ms >= round.ends_at_ms;
        if unknown && round.ends_at_ms <= now_ms && self.rounds.iter().any(ended_later) {
            return false;
        }
        let interval_was = self.min_interval_ms();
        match self.intervals.iter_mut().find(|(id, _)| *id == round.round_id) {
            Some((_, interval)) => *interval = min_interval_ms,
            None => self.intervals.push((round.round_id, min_interval_ms)),
        }
        let same_times = |known: &RoundInfo| {
            (known.starts_at_ms, known.ends_at_ms, known.start_spread_ms)
                == (round.starts_at_ms, round.ends_at_ms, round.start_spread_ms)
        };
        let news = match self.rounds.iter_mut().find(|r| r.round_id == round.round_id) {
            Some(known) => {
                let news = !same_times(known);
                *known = round;
                news
            }
            None => {
                self.rounds.push(round);
                true
            }
        };
        self.refresh_interval(now_ms);
        news || self.min_interval_ms() != interval_was
    }

    /// The allocator link came up: the allocator answers a worker's hello with every round it
    /// has, before any other frame, so the rounds named until the first other frame
    /// ([`Admission::on_round_list_end`]) are all there are. A round it no longer names (its
    /// configuration changed across a restart: a round removed or renumbered) is forgotten
    /// then; kept, it could be the one found open, and the shakes for the real round in its
    /// place were answered "round closed" until the edge restarted.
    pub fn on_link_up(&mut self) {
        self.named_since_link_up = Some(Vec::new());
    }

    /// A frame other than `RoundState` arrived: the round list since the link came up, if one
    /// was arriving, is complete; rounds it did not name are forgotten. Returns them as phones
    /// must now hear of them: closed at `now_ms` (a phone keeps a round until told otherwise,
    /// and would go on shaking for one the allocator no longer has).
    pub fn on_round_list_end(&mut self, now_ms: u64) -> Vec<RoundInfo> {
        let Some(named) = self.named_since_link_up.take() else { return Vec::new() };
        let forgotten: Vec<RoundInfo> = self
            .rounds
            .iter()
            .filter(|r| !named.contains(&r.round_id))
            .map(|r| RoundInfo {
                phase: shake_proto::RoundPhase::Closed,
                starts_at_ms: r.starts_at_ms.min(now_ms),
                ends_at_ms: r.ends_at_ms.min(now_ms),
                ..*r
            })
            .collect();
        self.keep_rounds(|r| named.contains(&r.round_id), now_ms);
        forgotten
    }

    /// Forgets the rounds that ended before `now_ms`, all but the last to end (phones between
    /// rounds are told it while none is to come). A round ended is over for good (a command
    /// may not reopen or extend it), and each kept one lengthened the shake path's search.
    pub fn forget_ended(&mut self, now_ms: u64) {
        let last_ended = self
            .rounds
            .iter()
            .filter(|r| r.ends_at_ms <= now_ms)
            .max_by_key(|r| r.ends_at_ms)
            .map(|r| r.round_id);
        self.keep_rounds(|r| r.ends_at_ms > now_ms || Some(r.round_id) == last_ended, now_ms);
    }

    /// Keeps the rounds `keep` says to, and their intervals.
    fn keep_rounds(&mut self, keep: impl Fn(&RoundInfo) -> bool, now_ms: u64) {
        let known = self.rounds.len();
        self.rounds.retain(keep);
        if self.rounds.len() != known {
            let rounds = &self.rounds;
            self.intervals.retain(|(id, _)| rounds.iter().any(|r| r.round_id == *id));
            self.refresh_interval(now_ms);
        }
    }

    /// Takes the interval of the round phones go by at `now_ms` (a round opening or closing
    /// changes it); true if the interval phones are asked to keep changed.
    pub fn refresh_interval(&mut self, now_ms: u64) -> bool {
        let was = self.min_interval_ms();
        let current = self.current_round(now_ms).round_id;
        if let Some(&(_, interval)) = self.intervals.iter().find(|(id, _)| *id == current) {
            self.min_interval_ms = interval;
        }
        self.min_interval_ms() != was
    }

    /// A quota for this worker (the edge's rate already divided between workers), heard at
    /// `now_ms`. It replaces the quota of the same round, else an empty or expired one, else
    /// one that is not the open round's (never the quota the open round is admitted by).
    pub fn on_quota(&mut self, round_id: u32, rate: Rate, valid_until_ms: u64, now_ms: u64) {
        let open = self.open_round(now_ms).map(|r| r.round_id);
        let rank = |q: &Option<Quota>| match q {
            Some(q) if q.round_id == round_id => 0,
            None => 1,
            Some(q) if q.valid_until_ms <= now_ms => 2,
            Some(q) if Some(q.round_id) != open => 3,
            Some(_) => 4,
        };
        let slot = if rank(&self.quotas[0]) <= rank(&self.quotas[1]) { 0 } else { 1 };
        self.quotas[slot] = Some(Quota { round_id, rate, valid_until_ms });
    }

    /// The round open at `now_ms`, if any.
    pub fn open_round(&self, now_ms: u64) -> Option<RoundInfo> {
        self.rounds.iter().copied().find(|r| (r.starts_at_ms..r.ends_at_ms).contains(&now_ms))
    }

    /// The round phones should hear about now (as [`Admission::told`]): the open one, else
    /// the next, else the last.
    pub fn current_round(&self, now_ms: u64) -> RoundInfo {
        if let Some(open) = self.open_round(now_ms) {
            return self.told(open);
        }
        let last =
            self.rounds.iter().filter(|r| r.ends_at_ms <= now_ms).max_by_key(|r| r.ends_at_ms);
        self.next_round(now_ms).or(last.copied()).map_or(RoundInfo::NONE, |r| self.told(r))
    }

    /// The next round to open after `now_ms`, as the allocator announced it.
    pub fn next_round(&self, now_ms: u64) -> Option<RoundInfo> {
        self.rounds
            .iter()
            .filter(|r| r.starts_at_ms > now_ms)
            .min_by_key(|r| r.starts_at_ms)
            .copied()
    }

    /// The rounds still to open after `now_ms` other than round `except` (the one `Welcome`
    /// told), as told, soonest first, at most [`UPCOMING_ROUNDS_AT_WELCOME`]: a phone welcomed
    /// after they were announced hears them right after its `Welcome`.
    pub fn upcoming_rounds(&self, now_ms: u64, except: u32) -> Vec<RoundInfo> {
        let mut upcoming: Vec<RoundInfo> = self
            .rounds
            .iter()
            .filter(|r| r.starts_at_ms > now_ms && r.round_id != except)
            .map(|r| self.told(*r))
            .collect();
        upcoming.sort_unstable_by_key(|r| r.starts_at_ms);
        upcoming.truncate(UPCOMING_ROUNDS_AT_WELCOME);
        upcoming
    }

    /// Spreads the start of round `round_id` over at least `spread_ms` for this worker's phones
    /// (at most half the round): the worker's own pace set before the opening.
    pub fn spread_start_over(&mut self, round_id: u32, spread_ms: u32) {
        self.spread_floor = (round_id, spread_ms);
    }

    /// `round` as this worker tells its phones: the allocator's word, with the worker's own
    /// start spread if that is longer.
    pub fn told(&self, mut round: RoundInfo) -> RoundInfo {
        let (round_id, floor_ms) = self.spread_floor;
        if round.round_id == round_id && floor_ms > round.start_spread_ms {
            let half = round.ends_at_ms.saturating_sub(round.starts_at_ms) / 2;
            round.start_spread_ms = floor_ms.min(u32::try_from(half).unwrap_or(u32::MAX));
        }
        round
    }

    /// The pacing the allocator asks for, never shorter than the per-phone bucket refills (so a
    /// phone that keeps it never earns slow-down): the base the worker's own pacing multiplies.
    pub fn base_interval_ms(&self) -> u32 {
        let per_s = self.settings.phone.per_s;
        let floor = if per_s > 0.0 { (1000.0 / per_s).ceil() as u32 } else { u32::MAX };
        self.min_interval_ms.max(floor)
    }

    /// The pacing phones are asked to keep: the base, or the worker's own under load.
    pub fn min_interval_ms(&self) -> u32 {
        self.base_interval_ms().max(self.pace_ms)
    }

    /// The worker's own pacing under load (0 or the base: none).
    pub fn set_pace_ms(&mut self, pace_ms: u32) {
        self.pace_ms = pace_ms;
    }

    /// The edge-bucket rate in force at `now_ms` for `round_id`.
    pub fn edge_rate(&self, round_id: u32, now_ms: u64) -> Rate {
        self.quotas
            .iter()
            .flatten()
            .find(|q| q.round_id == round_id && now_ms < q.valid_until_ms)
            .map_or(self.settings.fallback, |q| q.rate)
    }

    /// Decides one shake of a phone (whose bucket is `phone`) that names `shake_round`.
    #[inline]
    pub fn decide(
        &mut self,
        shake_round: u32,
        phone: &mut TokenBucket,
        now_us: u64,
        now_ms: u64,
    ) -> Decision {
        let Some(round) = self.open_round(now_ms).filter(|r| r.round_id == shake_round) else {
            return Decision::Answer(Verdict::RoundClosed);
        };
        if let Err(wait_us) = phone.try_take(self.settings.phone, now_us) {
            let wait_ms = u32::try_from(wait_us.div_ceil(1000)).unwrap_or(u32::MAX);
            return Decision::Answer(Verdict::SlowDown {
                retry_after_ms: wait_ms.max(self.min_interval_ms()),
            });
        }
        self.load.offered += 1;
        let rate = self.edge_rate(round.round_id, now_ms);
        if self.bucket.try_take(rate, now_us).is_err() {
            return Decision::Answer(Verdict::NoLuck);
        }
        self.load.admitted += 1;
        Decision::Admit { round_id: round.round_id }
    }

    /// Takes the load counts since the last call.
    pub fn take_load(&mut self) -> LoadCounts {
        std::mem::take(&mut self.load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shake_proto::RoundPhase;

    const T0_MS: u64 = 1_000_000;

    fn admission() -> Admission {
        let settings =
            AdmissionSettings { phone: Rate::new(10.0, 20.0), fallback: Rate::new(5.0, 5.0) };
        let mut a = Admission::new(settings, 0);
        a.on_round_state(
            RoundInfo {
                round_id: 3,
                phase: RoundPhase::Open,
                starts_at_ms: T0_MS,
                ends_at_ms: T0_MS + 60_000,
                start_spread_ms: 0,
            },
            100,
            T0_MS,
        );
        a
    }

    /// Rounds that ended leave the table, but the last to end (told between rounds when none
    /// is to come), with their intervals; the open and coming rounds stay.
    #[test]
    fn ended_rounds_are_forgotten_but_the_last() {
        let mut a = admission();
        let starts = |i: u64| T0_MS + 120_000 + i * 60_000;
        for i in 0..12u32 {
            let round = RoundInfo {
                round_id: 10 + i,
                phase: RoundPhase::Waiting,
                starts_at_ms: starts(u64::from(i)),
                ends_at_ms: starts(u64::from(i)) + 30_000,
                start_spread_ms: 0,
            };
            a.on_round_state(round, 100 + i, T0_MS);
        }
        let ids = |a: &Admission| a.rounds.iter().map(|r| r.round_id).collect::<Vec<_>>();
        let during_15 = starts(5) + 1;
        a.forget_ended(during_15);
        assert_eq!(ids(&a), (14..22).collect::<Vec<_>>());
        assert_eq!(a.open_round(during_15).map(|r| r.round_id), Some(15));
        assert_eq!(a.min_interval_ms, 105, "round 15's interval");
        let after_15 = starts(5) + 30_001;
        a.forget_ended(after_15);
        assert_eq!(ids(&a), (15..22).collect::<Vec<_>>());
        assert_eq!(a.current_round(after_15).round_id, 16, "the next");
        let after_all = starts(11) + 30_001;
        a.forget_ended(after_all);
        assert_eq!(ids(&a), vec![21]);
        assert_eq!(a.current_round(after_all).round_id, 21, "the last");
        assert_eq!(a.intervals, vec![(21, 111)]);
    }

    /// A worker that (re)connects late in a show hears every round again, the ended ones too:
    /// those it forgot are not news, and stay forgotten (each was broadcast to every phone
    /// as a new round, a whole table's worth at every reconnect, before).
    #[test]
    fn a_reconnect_late_in_a_show_brings_back_no_ended_round() {
        let mut a = admission();
        let starts = |i: u64| T0_MS + 120_000 + i * 60_000;
        let round = |i: u32| RoundInfo {
            round_id: 10 + i,
            phase: RoundPhase::Waiting,
            starts_at_ms: starts(u64::from(i)),
            ends_at_ms: starts(u64::from(i)) + 30_000,
            start_spread_ms: 0,
        };
        for i in 0..12u32 {
            a.on_round_state(round(i), 100, T0_MS);
        }
        let during_15 = starts(5) + 1;
        a.forget_ended(during_15);
        a.on_link_up();
        let three = a.rounds.iter().find(|r| r.round_id == 3).copied();
        assert!(three.is_none(), "round 3 was forgotten");
        let mut told = Vec::new();
        let first =
            RoundInfo { round_id: 3, starts_at_ms: T0_MS, ends_at_ms: T0_MS + 60_000, ..round(0) };
        told.push(a.on_round_state(first, 100, during_15));
        for i in 0..12u32 {
            told.push(a.on_round_state(round(i), 100, during_15));
        }
        assert!(told.iter().all(|news| !news), "{told:?}");
        assert!(a.on_round_list_end(during_15).is_empty());
        let ids = a.rounds.iter().map(|r| r.round_id).collect::<Vec<_>>();
        assert_eq!(ids, (14..22).collect::<Vec<_>>());
        assert_eq!(a.intervals.len(), ids.len());
    }

    #[test]
    fn upcoming_rounds_are_the_soonest_still_to_open_but_the_one_welcome_told() {
        let mut a = admission();
        // Twelve more rounds, announced latest first, a minute apart from T0 + 2 min.
        for i in (0..12u32).rev() {
            let starts_at_ms = T0_MS + 120_000 + u64::from(i) * 60_000;
            let round = RoundInfo {
                round_id: 10 + i,
                phase: RoundPhase::Waiting,
                starts_at_ms,
                ends_at_ms: starts_at_ms + 30_000,
                start_spread_ms: 0,
            };
            a.on_round_state(round, 100, T0_MS);
        }
        a.spread_start_over(11, 700);
        // Round 3 is open: Welcome names it; the next eight follow, soonest first, each as told.
        let ids = |rounds: Vec<RoundInfo>| rounds.iter().map(|r| r.round_id).collect::<Vec<_>>();
        let upcoming = a.upcoming_rounds(T0_MS, 3);
        assert_eq!(ids(upcoming.clone()), (10..18).collect::<Vec<_>>());
        assert_eq!(upcoming[1].start_spread_ms, 700, "round 11 as this worker tells it");
        // Between rounds Welcome names the next (10): it is not told twice; started ones never.
        assert_eq!(ids(a.upcoming_rounds(T0_MS + 60_000, 10)), (11..19).collect::<Vec<_>>());
        let late = T0_MS + 120_000 + 9 * 60_000;
        assert_eq!(ids(a.upcoming_rounds(late, 20)), vec![21]);
    }

    #[test]
    fn every_verdict_in_order() {
        let mut a = admission();
        let mut phone = a.new_phone_bucket(0);
        // Before the round, or naming another round: round closed, and not counted as offered.
        assert_eq!(a.decide(3, &mut phone, 0, T0_MS - 1), Decision::Answer(Verdict::RoundClosed));
        assert_eq!(a.decide(4, &mut phone, 0, T0_MS), Decision::Answer(Verdict::RoundClosed));
        assert_eq!(a.take_load().offered, 0);
        // The fallback edge bucket holds 5: five admitted, then no-luck.
        for _ in 0..5 {
            assert_eq!(a.decide(3, &mut phone, 0, T0_MS), Decision::Admit { round_id: 3 });
        }
        assert_eq!(a.decide(3, &mut phone, 0, T0_MS), Decision::Answer(Verdict::NoLuck));
        // The phone's own burst of 20 runs out: slow down, at least the pacing interval.
        for _ in 0..14 {
            a.decide(3, &mut phone, 0, T0_MS);
        }
        assert_eq!(
            a.decide(3, &mut phone, 0, T0_MS),
            Decision::Answer(Verdict::SlowDown { retry_after_ms: 100 })
        );
        // The slowed-down shake is not offered load: it was past the phone's own rate.
        let load = a.take_load();
        assert_eq!((load.offered, load.admitted), (20, 5));
        // After the round: closed.
        assert_eq!(
            a.decide(3, &mut phone, 0, T0_MS + 60_000),
            Decision::Answer(Verdict::RoundClosed)
        );
    }

    #[test]
    fn a_quota_replaces_the_fallback_until_it_expires() {
        let mut a = admission();
        a.on_quota(3, Rate::new(1000.0, 50.0), T0_MS + 5_000, T0_MS);
        assert_eq!(a.edge_rate(3, T0_MS), Rate::new(1000.0, 50.0));
        assert_eq!(a.edge_rate(3, T0_MS + 5_000), Rate::new(5.0, 5.0));
        assert_eq!(a.edge_rate(4, T0_MS), Rate::new(5.0, 5.0));
        // With the quota, many phones get far more than the fallback's 5 through.
        let mut admitted = 0;
        for i in 0..200u64 {
            let mut phone = a.new_phone_bucket(0);
            if a.decide(3, &mut phone, i * 1_000, T0_MS + 1) == (Decision::Admit { round_id: 3 }) {
                admitted += 1;
            }
        }
        assert!(admitted > 150, "admitted {admitted}");
    }

    #[test]
    fn the_interval_told_is_never_shorter_than_the_phone_bucket_allows() {
        let mut a = admission();
        assert_eq!(a.min_interval_ms(), 100);
        let round = a.current_round(T0_MS);
        a.on_round_state(round, 40, T0_MS);
        assert_eq!(a.min_interval_ms(), 100, "the bucket refills at 10/s");
        a.on_round_state(round, 250, T0_MS);
        assert_eq!(a.min_interval_ms(), 250);
        // A phone that keeps the interval told is never slowed down, burst or not.
        let mut phone = a.new_phone_bucket(0);
        for i in 0..100u64 {
            let decision = a.decide(3, &mut phone, i * 250_000, T0_MS + 1);
            assert!(!matches!(decision, Decision::Answer(Verdict::SlowDown { .. })), "shake {i}");
        }
        // The worker's own pacing lengthens the interval told and slow-downs' retry, never
        // shortens it.
        a.set_pace_ms(1_000);
        assert_eq!((a.base_interval_ms(), a.min_interval_ms()), (250, 1_000));
        let mut phone = a.new_phone_bucket(0);
        let slowed = (0..100u64)
            .map(|i| a.decide(3, &mut phone, 1_000 * i, T0_MS + 2))
            .find(|d| matches!(d, Decision::Answer(Verdict::SlowDown { .. })));
        assert_eq!(slowed, Some(Decision::Answer(Verdict::SlowDown { retry_after_ms: 1_000 })));
        a.set_pace_ms(10);
        assert_eq!(a.min_interval_ms(), 250);
    }

    /// Each round keeps its own interval: the state of a later round (every round is told in
    /// order when a worker reconnects; an operator slows a round to come) never sets the open
    /// round's, and the next round's applies once it is the one phones go by.
    #[test]
    fn the_interval_in_force_is_the_current_rounds() {
        let mut a = admission();
        let open = a.current_round(T0_MS);
        a.on_round_state(open, 2_000, T0_MS);
        assert_eq!(a.min_interval_ms(), 2_000);
        let later = RoundInfo {
            round_id: 4,
            starts_at_ms: open.ends_at_ms + 10_000,
            ends_at_ms: open.ends_at_ms + 70_000,
            ..open
        };
        a.on_round_state(later, 150, T0_MS + 1);
        assert_eq!(a.min_interval_ms(), 2_000, "the open round's, not the last told");
        // Once round 3 has ended, round 4 is the one phones go by.
        assert!(a.refresh_interval(open.ends_at_ms));
        assert_eq!(a.min_interval_ms(), 150);
        assert!(!a.refresh_interval(open.ends_at_ms + 1), "no change: nothing to tell");
    }

    /// The load the allocator shares quota by counts only shakes within their phone's own
    /// rate: a phone ignoring slow-down adds no more than an honest one.
    #[test]
    fn shakes_past_a_phones_own_rate_are_not_offered_load() {
        let mut a = admission();
        let mut spammer = a.new_phone_bucket(0);
        for i in 0..1_000u64 {
            a.decide(3, &mut spammer, i * 1_000, T0_MS + 1);
        }
        // One second at 1,000 shakes: its burst of 20 and about 10 refilled.
        let load = a.take_load();
        assert!((20..=31).contains(&load.offered), "{load:?}");
        assert!(load.admitted <= load.offered);
    }

    /// The next round's quota, sent before it opens, does not replace the open round's: each
    /// round is admitted at its own quota (before, one slot: the open round fell back to the
    /// fallback rate, or the next one opened on it).
    #[test]
    fn the_open_and_the_next_rounds_quotas_are_each_kept() {
        let mut a = admission();
        a.on_quota(3, Rate::new(7.0, 1.0), T0_MS + 5_000, T0_MS);
        a.on_quota(4, Rate::new(2.0, 1.0), T0_MS + 5_000, T0_MS);
        assert_eq!(a.edge_rate(3, T0_MS).per_s, 7.0);
        assert_eq!(a.edge_rate(4, T0_MS).per_s, 2.0);
        // A refresh of round 4 replaces its own; round 5's replaces round 4's, never that of
        // round 3, the open one, though it expires first.
        a.on_quota(4, Rate::new(3.0, 1.0), T0_MS + 6_000, T0_MS);
        assert_eq!((a.edge_rate(3, T0_MS).per_s, a.edge_rate(4, T0_MS).per_s), (7.0, 3.0));
        a.on_quota(5, Rate::new(9.0, 1.0), T0_MS + 7_000, T0_MS);
        assert_eq!((a.edge_rate(3, T0_MS).per_s, a.edge_rate(5, T0_MS).per_s), (7.0, 9.0));
        assert_eq!(a.edge_rate(4, T0_MS).per_s, 5.0, "round 4's gone: the fallback");
        // An expired quota is the fallback, and the first to be replaced.
        assert_eq!(a.edge_rate(5, T0_MS + 7_000).per_s, 5.0);
        a.on_quota(6, Rate::new(4.0, 1.0), T0_MS + 9_000, T0_MS + 6_000);
        assert_eq!(a.edge_rate(5, T0_MS + 6_000).per_s, 9.0, "round 3's expired one went");
    }

    #[test]
    fn only_what_phones_do_not_know_is_news() {
        let mut a = admission();
        let round = a.current_round(T0_MS);
        assert!(!a.on_round_state(round, 100, T0_MS), "the same round and interval again");
        let opened = RoundInfo { phase: RoundPhase::Closed, ..round };
        assert!(
            !a.on_round_state(opened, 100, T0_MS),
            "a phase change alone: phones know the times"
        );
        let longer = RoundInfo { ends_at_ms: round.ends_at_ms + 1_000, ..round };
        assert!(a.on_round_state(longer, 100, T0_MS), "other times");
        let spread = RoundInfo { start_spread_ms: 500, ..longer };
        assert!(a.on_round_state(spread, 100, T0_MS), "another start spread");
        assert!(a.on_round_state(spread, 500, T0_MS), "another interval");
        let next = RoundInfo { round_id: round.round_id + 1, ..spread };
        assert!(a.on_round_state(next, 500, T0_MS), "a round not known before");
    }

    #[test]
    fn the_workers_own_start_spread_is_told_when_longer_and_at_most_half_the_round() {
        let mut a = admission();
        let round = a.current_round(T0_MS);
        assert_eq!(a.next_round(T0_MS - 1).map(|r| r.round_id), Some(round.round_id));
        assert_eq!(a.next_round(T0_MS), None, "open, not next");
        a.spread_start_over(round.round_id, 1_800);
        assert_eq!(a.current_round(T0_MS).start_spread_ms, 1_800);
        assert_eq!(a.told(RoundInfo { start_spread_ms: 2_500, ..round }).start_spread_ms, 2_500);
        assert_eq!(a.told(RoundInfo { round_id: 99, ..round }).start_spread_ms, 0, "other round");
        let half = (round.ends_at_ms - round.starts_at_ms) / 2;
        a.spread_start_over(round.round_id, u32::MAX);
        assert_eq!(u64::from(a.current_round(T0_MS).start_spread_ms), half);
    }

    #[test]
    fn current_round_prefers_open_then_next_then_last() {
        let mut a = admission();
        let round = |id, start| RoundInfo {
            round_id: id,
            phase: RoundPhase::Waiting,
            starts_at_ms: start,
            ends_at_ms: start + 10,
            start_spread_ms: 0,
        };
        a.on_round_state(round(9, T0_MS + 100_000), 100, T0_MS);
        assert_eq!(a.current_round(T0_MS + 1).round_id, 3);
        assert_eq!(a.current_round(T0_MS + 70_000).round_id, 9);
        assert_eq!(a.current_round(T0_MS + 200_000).round_id, 9);
        assert_eq!(Admission::new(a.settings, 0).current_round(0), RoundInfo::NONE);
    }
}
