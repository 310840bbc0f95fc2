//! One user, one chance, as the swarm sees it: multi-connection cheaters' forwarded shakes and
//! wins per user against honest users'.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::stats::{ReceivedAward, UserTally};

/// Most a cheating user may get, as a multiple of an honest user's.
pub const FAIR_RATIO_MAX: f64 = 1.5;

/// Cheaters against honest users.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Fairness {
    /// Cheating users.
    pub cheating_users: u64,
    /// Honest users (phones).
    pub honest_users: u64,
    /// Shakes answered `forwarded` per cheating user, median.
    pub cheater_forwarded_median: f64,
    /// The same for honest users.
    pub honest_forwarded_median: f64,
    /// A cheating user's forwarded shakes over the honest median, median over cheating users.
    pub cheater_forwarded_ratio: f64,
    /// Awards received by all cheating users.
    pub cheater_wins: u64,
    /// Awards received per honest user, mean.
    pub honest_wins_per_user: f64,
    /// Awards per cheating user over awards per honest user.
    pub cheater_wins_ratio: f64,
    /// Most awards the cheaters may have together: `FAIR_RATIO_MAX` times what as many honest
    /// users would get, plus three standard deviations of chance (wins are few, roughly
    /// Poisson).
    pub cheater_wins_allowed: f64,
}

impl Fairness {
    /// From the users' tallies and the awards received; `None` without cheaters or honest
    /// users.
    pub fn measure(users: &HashMap<u64, UserTally>, awards: &[ReceivedAward]) -> Option<Self> {
        let mut wins: HashMap<u64, u64> = HashMap::new();
        for award in awards {
            *wins.entry(award.user_id).or_default() += 1;
        }
        let (mut cheaters, mut honest) = (Vec::new(), Vec::new());
        for (user, tally) in users {
            let w = wins.get(user).copied().unwrap_or(0);
            if tally.cheater {
                cheaters.push((tally.forwarded as f64, w));
            } else {
                honest.push((tally.forwarded as f64, w));
            }
        }
        if cheaters.is_empty() || honest.is_empty() {
            return None;
        }
        let honest_median = median(honest.iter().map(|(f, _)| *f).collect());
        let cheater_median = median(cheaters.iter().map(|(f, _)| *f).collect());
        let ratio = median(
            cheaters
                .iter()
                .map(|(f, _)| if honest_median > 0.0 { f / honest_median } else { 0.0 })
                .collect(),
        );
        let honest_wins_per_user =
            honest.iter().map(|(_, w)| *w as f64).sum::<f64>() / honest.len() as f64;
        let cheater_wins: u64 = cheaters.iter().map(|(_, w)| w).sum();
        let expected = honest_wins_per_user * cheaters.len() as f64;
        Some(Self {
            cheating_users: cheaters.len() as u64,
            honest_users: honest.len() as u64,
            cheater_forwarded_median: cheater_median,
            honest_forwarded_median: honest_median,
            cheater_forwarded_ratio: ratio,
            cheater_wins,
            honest_wins_per_user,
            cheater_wins_ratio: if expected > 0.0 { cheater_wins as f64 / expected } else { 0.0 },
            cheater_wins_allowed: FAIR_RATIO_MAX * expected + 3.0 * expected.sqrt(),
        })
    }

    /// Cheaters got no more than an honest user's chance (forwarded within the ratio, wins
    /// within what chance allows).
    pub fn holds(&self) -> bool {
        self.cheater_forwarded_ratio <= FAIR_RATIO_MAX
            && self.cheater_wins as f64 <= self.cheater_wins_allowed
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(u64, bool, u64)]) -> HashMap<u64, UserTally> {
        list.iter().map(|&(u, cheater, forwarded)| (u, UserTally { cheater, forwarded })).collect()
    }

    fn award(user_id: u64) -> ReceivedAward {
        ReceivedAward::new(user_id * 100, user_id, 1, &shake_proto::Prize::Cash { cents: 1 })
    }

    #[test]
    fn fair_cheaters_pass_and_greedy_ones_fail() {
        let honest = [(1, false, 20), (2, false, 24), (3, false, 22)];
        let fair = users(&[honest[0], honest[1], honest[2], (10, true, 20), (11, true, 30)]);
        let f = Fairness::measure(&fair, &[award(1), award(2), award(10)]).unwrap();
        assert_eq!(f.honest_forwarded_median, 22.0);
        assert_eq!(f.cheater_forwarded_median, 25.0);
        assert!((f.cheater_forwarded_ratio - 25.0 / 22.0).abs() < 1e-9);
        assert!(f.holds());
        // Ten times an honest user's forwarded shakes.
        let greedy = users(&[honest[0], honest[1], honest[2], (10, true, 220), (11, true, 200)]);
        assert!(!Fairness::measure(&greedy, &[]).unwrap().holds());
        // Wins far beyond chance.
        let wins: Vec<ReceivedAward> = (0..12).map(|_| award(10)).collect();
        let f = Fairness::measure(&fair, &wins).unwrap();
        assert_eq!(f.cheater_wins, 12);
        assert!(!f.holds(), "{f:?}");
    }

    #[test]
    fn nothing_to_compare_without_cheaters() {
        assert!(Fairness::measure(&users(&[(1, false, 3)]), &[]).is_none());
    }
}
