//! Admission quotas: how many shakes per second each edge may forward.
//!
//! The whole fleet is admitted about `oversampling x` the rate at which prizes are still to be
//! given out (unawarded prizes over the seconds left in the round), shared between edges by
//! the offered load they report. An edge whose last report is older than the staleness limit
//! gets nothing; an edge that has not reported yet gets the mean share, so a new edge is not
//! starved before its first report.

use std::collections::HashMap;

/// One edge's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeQuota {
    /// Admitted shakes per second, whole edge.
    pub rate_per_s: u32,
    /// Token bucket depth.
    pub burst: u32,
}

/// Last load report of each edge worker.
#[derive(Debug, Clone, Default)]
pub struct QuotaPlanner {
    reports: HashMap<(u64, u16), (f64, u64)>,
}

impl QuotaPlanner {
    /// Records a worker's `LoadReport`: `offered` shakes over `window_ms`, received at `now_ms`.
    pub fn report(
        &mut self,
        edge_id: u64,
        worker_id: u16,
        window_ms: u32,
        offered: u64,
        now_ms: u64,
    ) {
        let rate =
            if window_ms == 0 { 0.0 } else { offered as f64 * 1000.0 / f64::from(window_ms) };
        self.reports.insert((edge_id, worker_id), (rate, now_ms));
    }

    /// Forgets an edge (its last stream closed).
    pub fn forget(&mut self, edge_id: u64) {
        self.reports.retain(|(edge, _), _| *edge != edge_id);
    }

    /// An edge's offered rate (its workers' fresh reports summed), and whether any is fresh.
    fn edge_report(&self, edge_id: u64, now_ms: u64, stale_after_ms: u64) -> Option<(f64, bool)> {
        let mut newest = None;
        let mut rate = 0.0;
        for ((edge, _), (worker_rate, at)) in &self.reports {
            if *edge != edge_id {
                continue;
            }
            newest = newest.max(Some(*at));
            if now_ms.saturating_sub(*at) <= stale_after_ms {
                rate += worker_rate;
            }
        }
        newest.map(|at| (rate, now_ms.saturating_sub(at) <= stale_after_ms))
    }

    /// Splits `fleet_rate` between `edges` (the connected ones).
    pub fn plan(
        &self,
        edges: &[u64],
        fleet_rate: f64,
        now_ms: u64,
        stale_after_ms: u64,
    ) -> Vec<(u64, EdgeQuota)> {
        let reports: Vec<Option<(f64, bool)>> =
            edges.iter().map(|e| self.edge_report(*e, now_ms, stale_after_ms)).collect();
        let fresh: Vec<f64> =
            reports.iter().flatten().filter(|(_, fresh)| *fresh).map(|(rate, _)| *rate).collect();
        let mean =
            if fresh.is_empty() { 1.0 } else { fresh.iter().sum::<f64>() / fresh.len() as f64 };
        let weights: Vec<f64> = reports
            .iter()
            .map(|report| match report {
                None => mean.max(1.0),
                Some((_, false)) => 0.0,
                // An edge that reports no load keeps a trickle, so it can tell us it has some.
                Some((rate, true)) => rate.max(1.0),
            })
            .collect();
        let total: f64 = weights.iter().sum();
        edges
            .iter()
            .zip(weights)
            .map(|(edge, weight)| {
                let rate = if total > 0.0 { fleet_rate * weight / total } else { 0.0 };
                let rate = rate.round().min(f64::from(u32::MAX)) as u32;
                (*edge, EdgeQuota { rate_per_s: rate, burst: (rate / 5).max(1) })
            })
            .collect()
    }
}

/// The fleet's admission rate: `oversampling x` prizes left per second left.
pub fn fleet_rate(oversampling: f64, prizes_left: u64, ms_left: u64) -> f64 {
    let seconds_left = (ms_left as f64 / 1000.0).max(1.0);
    (oversampling * prizes_left as f64 / seconds_left).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_offered_load_summed_over_workers_and_stale_edges_lose_theirs() {
        let mut planner = QuotaPlanner::default();
        planner.report(1, 0, 1000, 2000, 10_000);
        planner.report(1, 1, 1000, 1000, 10_000);
        planner.report(2, 0, 1000, 1000, 10_000);
        let plan = planner.plan(&[1, 2], 400.0, 10_500, 3_000);
        assert_eq!(plan[0].1.rate_per_s, 300);
        assert_eq!(plan[1].1.rate_per_s, 100);
        // Edge 2 stops reporting: after the staleness limit, edge 1 gets everything.
        planner.report(1, 0, 1000, 3000, 14_000);
        let plan = planner.plan(&[1, 2], 400.0, 14_000, 3_000);
        assert_eq!(plan[0].1.rate_per_s, 400);
        assert_eq!(plan[1].1.rate_per_s, 0);
    }

    #[test]
    fn a_new_edge_gets_the_mean_share() {
        let mut planner = QuotaPlanner::default();
        planner.report(1, 0, 1000, 2000, 0);
        let plan = planner.plan(&[1, 2], 100.0, 0, 3_000);
        assert_eq!(plan[0].1.rate_per_s, 50);
        assert_eq!(plan[1].1.rate_per_s, 50);
        assert_eq!(planner.plan(&[9], 10.0, 0, 1).first().unwrap().1.rate_per_s, 10);
    }

    #[test]
    fn fleet_rate_is_oversampled_prizes_per_second_left() {
        assert_eq!(fleet_rate(4.0, 1000, 10_000), 400.0);
        assert_eq!(fleet_rate(4.0, 1000, 100), 4000.0);
        assert_eq!(fleet_rate(4.0, 0, 10_000), 1.0);
    }
}
