//! Plan arithmetic: the weights of the steps a strategy takes, and how many canary replicas a
//! weight needs. Pure numbers; no decision about when to move.

/// The weights of `stepWeight` steps up to `maxWeight`: `step, 2×step, ...`, the last one capped
/// at `max` (so 30 up to 50 is `[30, 50]`).
pub fn step_weights(step: i32, max: i32) -> Vec<i32> {
    let step = step.clamp(1, 100);
    let max = max.clamp(step, 100);
    let mut weights = Vec::new();
    let mut weight = step;
    while weight < max {
        weights.push(weight);
        weight += step;
    }
    weights.push(max);
    weights
}

/// Canary replicas behind a router at `weight` percent of the traffic the target's `replicas`
/// serve: `ceil(replicas × weight / 100)`, never fewer than one while a canary runs.
pub fn routed_replicas(replicas: i32, weight: i32) -> i32 {
    let replicas = i64::from(replicas.max(0));
    let weight = i64::from(weight.clamp(0, 100));
    let needed = (replicas * weight + 99) / 100;
    i32::try_from(needed.max(1)).unwrap_or(i32::MAX)
}

/// Canary replicas for the replica-ratio router (`none`), where the split follows the pod count:
/// `round(N × w / (100 − w))` beside `N` stable pods, at least one. At 100% the canary takes the
/// stable size (the ratio is unbounded; promotion follows).
pub fn ratio_replicas(replicas: i32, weight: i32) -> i32 {
    let n = f64::from(replicas.max(0));
    let w = f64::from(weight.clamp(0, 100));
    if weight >= 100 {
        return replicas.max(1);
    }
    let exact = (n * w / (100.0 - w)).round();
    // `exact` is at most 99 × N, well inside i32 for any Deployment size.
    let rounded = if exact > f64::from(i32::MAX) {
        i32::MAX
    } else {
        exact as i32
    };
    rounded.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_weight_steps_stop_at_the_max_weight() {
        assert_eq!(step_weights(10, 50), vec![10, 20, 30, 40, 50]);
        assert_eq!(step_weights(30, 50), vec![30, 50]);
        assert_eq!(step_weights(50, 50), vec![50]);
        assert_eq!(step_weights(25, 100), vec![25, 50, 75, 100]);
    }

    #[test]
    fn routed_replicas_round_up_and_keep_at_least_one_pod() {
        assert_eq!(routed_replicas(10, 10), 1);
        assert_eq!(routed_replicas(10, 15), 2);
        assert_eq!(routed_replicas(3, 1), 1);
        assert_eq!(routed_replicas(0, 50), 1);
        assert_eq!(routed_replicas(4, 100), 4);
    }

    #[test]
    fn ratio_replicas_follow_the_replica_ratio() {
        // 10% beside 9 stable pods is 1 canary pod; 50% is as many as stable.
        assert_eq!(ratio_replicas(9, 10), 1);
        assert_eq!(ratio_replicas(4, 50), 4);
        assert_eq!(ratio_replicas(4, 20), 1);
        assert_eq!(ratio_replicas(10, 75), 30);
        assert_eq!(ratio_replicas(1, 1), 1);
    }
}
