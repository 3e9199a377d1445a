//! The traffic simulator: two small HTTP apps (stable and canary) that export the series real
//! exporters write ([`app`]), a simulated ingress-nginx in front of them that splits requests by
//! the weights the router object holds and exports the controller's series ([`ingress`]), the
//! readers of those weights ([`weights`]), and a load generator that sends real requests through
//! the ingress ([`load`]).
//!
//! Series names and labels follow `/work/shared/METRICS.md` (read from the exporters' sources), so
//! every shipped analysis template can run against series shaped like production ones. Everything
//! listens on and talks to 127.0.0.1 only.
//!
//! Randomness is replaced by even spreading: an app with a 20 % error rate fails exactly every
//! fifth request, and a 20 % canary weight sends exactly every fifth request to the canary. Tests
//! then assert tight tolerances without flaking; the production traps (such as an error series that
//! appears only on the first error) are kept.

pub mod app;
mod exposition;
pub mod ingress;
pub mod load;
pub mod stack;
pub mod weights;

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running loopback HTTP server; dropping it shuts the server down.
#[derive(Debug)]
pub(crate) struct ServerGuard {
    // Dropping the sender is the shutdown signal.
    _stop: oneshot::Sender<()>,
}

/// Serves `router` on a free port of 127.0.0.1 until the returned guard is dropped.
pub(crate) async fn serve_loopback(
    router: axum::Router,
) -> std::io::Result<(SocketAddr, ServerGuard)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            // Resolves when the guard is dropped.
            let _ignored = stopped.await;
        };
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, %addr, "a simulated server stopped serving");
        }
    });
    Ok((addr, ServerGuard { _stop: stop }))
}

/// The characters Kubernetes uses in generated names (`k8s.io/apimachinery` `rand.SafeEncodeString`):
/// no vowels, no look-alike digits.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A pod name the way a Deployment's ReplicaSet names its pods, `<workload>-<hash>-<suffix>`, with
/// a 10-character template hash and a 5-character suffix derived from `seed` (the same seed, the
/// same name).
pub fn pod_name(workload: &str, seed: &str) -> String {
    let digest = Sha256::digest(format!("{workload}\u{0}{seed}").as_bytes());
    let safe = |byte: &u8| char::from(SAFE_ALPHABET[usize::from(*byte) % SAFE_ALPHABET.len()]);
    let hash: String = digest.iter().take(10).map(safe).collect();
    let suffix: String = digest.iter().skip(10).take(5).map(safe).collect();
    format!("{workload}-{hash}-{suffix}")
}

/// How long an app takes to answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Spread evenly between `min` and `max`.
    Uniform {
        /// The shortest.
        min: Duration,
        /// The longest.
        max: Duration,
    },
    /// Each duration for its share of requests, e.g. 90 % at 10 ms and 10 % at 800 ms for a slow
    /// tail. Shares are relative (they need not add up to 1).
    Mix(Vec<(f64, Duration)>),
}

impl Latency {
    /// No added latency.
    pub fn none() -> Self {
        Self::Fixed(Duration::ZERO)
    }

    /// The latency of the `index`-th request: a pure function, so the sequence is reproducible.
    pub fn for_request(&self, index: u64) -> Duration {
        match self {
            Self::Fixed(latency) => *latency,
            Self::Uniform { min, max } => {
                let spread = max.saturating_sub(*min);
                min.saturating_add(spread.mul_f64(unit_interval(index)))
            }
            Self::Mix(parts) => {
                let total: f64 = parts.iter().map(|(share, _)| share.max(0.0)).sum();
                let mut point = unit_interval(index) * total;
                for (share, latency) in parts {
                    if point < share.max(0.0) {
                        return *latency;
                    }
                    point -= share.max(0.0);
                }
                parts.last().map_or(Duration::ZERO, |(_, latency)| *latency)
            }
        }
    }
}

/// A well-mixed number in [0, 1) for `index` (SplitMix64), so latencies look random but repeat.
fn unit_interval(index: u64) -> f64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the `index`-th event (from 0) is one of the `share` picked when picks are spread as
/// evenly as possible: over any `n` consecutive events, `share * n` are picked, give or take one.
pub fn is_picked(share: f64, index: u64) -> bool {
    let share = share.clamp(0.0, 1.0);
    let before = (index as f64 * share).floor();
    let after = ((index + 1) as f64 * share).floor();
    after > before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_look_like_a_replica_sets_pods_and_are_stable() {
        let name = pod_name("web-canary", "shop");
        let parts: Vec<&str> = name.rsplitn(3, '-').collect();
        assert_eq!(parts[2], "web-canary", "{name}");
        assert_eq!(parts[1].len(), 10, "{name}");
        assert_eq!(parts[0].len(), 5, "{name}");
        assert!(
            parts[0]
                .bytes()
                .chain(parts[1].bytes())
                .all(|b| SAFE_ALPHABET.contains(&b))
        );
        assert_eq!(name, pod_name("web-canary", "shop"));
        assert_ne!(name, pod_name("web", "shop"));
    }

    #[test]
    fn picks_are_spread_evenly_at_the_asked_share() {
        for share in [0.0, 0.05, 0.2, 0.5, 0.999, 1.0] {
            let picked = (0..1000).filter(|i| is_picked(share, *i)).count();
            assert!(
                (picked as f64 - share * 1000.0).abs() <= 1.0,
                "{share}: {picked}"
            );
            let first_hundred = (0..100).filter(|i| is_picked(share, *i)).count();
            assert!((first_hundred as f64 - share * 100.0).abs() <= 1.0);
        }
    }

    #[test]
    fn a_latency_mix_gives_each_duration_about_its_share() {
        let mix = Latency::Mix(vec![
            (0.9, Duration::from_millis(10)),
            (0.1, Duration::from_millis(800)),
        ]);
        let slow = (0..10_000)
            .filter(|i| mix.for_request(*i) == Duration::from_millis(800))
            .count();
        assert!((800..1200).contains(&slow), "{slow}");
    }

    #[test]
    fn uniform_latencies_stay_within_their_bounds() {
        let uniform = Latency::Uniform {
            min: Duration::from_millis(5),
            max: Duration::from_millis(15),
        };
        assert!((0..1000).all(|i| {
            let latency = uniform.for_request(i);
            latency >= Duration::from_millis(5) && latency <= Duration::from_millis(15)
        }));
    }
}
