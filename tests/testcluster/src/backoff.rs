//! The watch backoff of the harness's own watches (the Deployment stand-in, the tests' history
//! recorder): 100 ms doubling to 1 s. kube's default grows to 30 s and resets only on a good item,
//! so after an API outage a harness watch could come back only once the scenario it serves was
//! over: the stand-in would not roll out a promoted Deployment, the recorder would miss steps.

use std::time::Duration;

/// 100 ms doubling to 1 s, reset by any good item.
#[derive(Debug, Clone)]
pub struct QuickBackoff(Duration);

impl QuickBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);
}

impl Default for QuickBackoff {
    fn default() -> Self {
        QuickBackoff(Self::FIRST)
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.0;
        self.0 = (current * 2).min(Self::MAX);
        Some(current)
    }
}

impl kube::runtime::utils::Backoff for QuickBackoff {
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn doubles_to_one_second_and_starts_over_on_reset() {
        let mut backoff = QuickBackoff::default();
        let waits: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }
}
