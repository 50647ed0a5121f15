//! The cluster credential every call between weir processes carries (docs/operations.md,
//! Security): executor to driver, driver to executor, executor to executor over Flight.
//!
//! Processes share a secret; it never crosses the network. A call carries
//! `v1.<unix ms>.<nonce>.<HMAC-SHA256(secret, time and nonce)>` in `x-weir-cluster-auth`. The
//! receiver checks the MAC in constant time, that the time is within [`MAX_SKEW`] of its own
//! clock, and that it has not seen the nonce before, so a credential copied off the wire
//! cannot be used again. A driver answering `Register` proves it knows the secret too
//! (`x-weir-cluster-proof`, a MAC over the caller's nonce): an executor takes its job only from
//! the real driver.
//!
//! A secret file may hold several secrets, one per line: the first signs, any verifies, which
//! is how a secret is rotated without stopping the job.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

/// The request header that carries the credential.
pub const CREDENTIAL_HEADER: &str = "x-weir-cluster-auth";
/// The response header in which the driver proves it knows the secret.
pub const PROOF_HEADER: &str = "x-weir-cluster-proof";
/// How far a credential's time may be from the receiver's clock (clocks of a cluster's machines
/// are kept within seconds by NTP; Kerberos allows five minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// Peers refused with a warning each; refusals beyond are only counted.
const WARNED_PEERS: usize = 1024;

/// Why a secret is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the cluster secret is empty")]
    Empty,
    #[error(
        "line {line} of the cluster secret has {len} characters; a secret needs at least \
         {MIN_SECRET_LEN} (generate one with `openssl rand -hex 32`)"
    )]
    TooShort { line: usize, len: usize },
}

/// One or more shared secrets: the first signs, every one verifies. Prints as `***`.
#[derive(Clone)]
pub struct ClusterSecret {
    keys: Arc<Vec<hmac::Key>>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} key(s), ***)", self.keys.len())
    }
}

/// A nonce of a verified call, which the handler may answer with a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub nonce: u128,
}

/// Why a call was refused (the message names no secret and echoes nothing the caller sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the call carries no cluster credential")]
    Missing,
    #[error("the cluster credential is malformed")]
    Malformed,
    #[error("the cluster credential is {0} s away from this machine's clock (check NTP)")]
    Skewed(u64),
    #[error("the cluster credential does not match this cluster's secret")]
    Mismatch,
    #[error("the cluster credential was used before")]
    Replayed,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn signed_text(ms: u64, nonce: u128) -> String {
    format!("weir-cluster-v1|{ms}|{nonce:032x}")
}

fn proof_text(nonce: u128) -> String {
    format!("weir-cluster-proof-v1|{nonce:032x}")
}

fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    // The system's random source fails only when the kernel has none to give; a nonce of
    // zeros is then refused as a replay by its second use, never accepted twice.
    let _ = SystemRandom::new().fill(&mut bytes);
    u128::from_le_bytes(bytes)
}

impl ClusterSecret {
    /// Secrets from text: one per non-empty line, surrounding whitespace ignored.
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    line: i + 1,
                    len: line.len(),
                });
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, line.as_bytes()));
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// A new random secret, as text (`weir local` makes one per run).
    pub fn generate() -> String {
        format!("{:032x}{:032x}", random_u128(), random_u128())
    }

    fn sign(&self, text: &str) -> String {
        hex::encode(hmac::sign(&self.keys[0], text.as_bytes()).as_ref())
    }

    fn verifies(&self, text: &str, tag_hex: &str) -> bool {
        let Ok(tag) = hex::decode(tag_hex) else {
            return false;
        };
        self.keys
            .iter()
            .any(|k| hmac::verify(k, text.as_bytes(), &tag).is_ok())
    }

    /// A fresh credential and its nonce.
    pub fn credential(&self) -> (String, u128) {
        let nonce = random_u128();
        let ms = now_ms();
        let tag = self.sign(&signed_text(ms, nonce));
        (format!("v1.{ms}.{nonce:032x}.{tag}"), nonce)
    }

    /// Puts a fresh credential into a call's metadata; answers its nonce.
    pub fn attach(&self, metadata: &mut MetadataMap) -> u128 {
        let (value, nonce) = self.credential();
        // Hex digits, dots and a `v`: always a valid header value.
        if let Ok(v) = MetadataValue::try_from(value.as_str()) {
            metadata.insert(CREDENTIAL_HEADER, v);
        }
        nonce
    }

    /// Checks a credential's form, time and MAC (not whether it was seen before).
    fn check(&self, value: &str, now_ms: u64) -> Result<Verified, Refusal> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(ms), Some(nonce), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Malformed);
        };
        let ms: u64 = ms.parse().map_err(|_| Refusal::Malformed)?;
        if nonce.len() != 32 {
            return Err(Refusal::Malformed);
        }
        let nonce = u128::from_str_radix(nonce, 16).map_err(|_| Refusal::Malformed)?;
        // The MAC first: an unauthenticated caller learns nothing about this machine's clock.
        if !self.verifies(&signed_text(ms, nonce), tag) {
            return Err(Refusal::Mismatch);
        }
        let skew = ms.abs_diff(now_ms);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Skewed(skew / 1000));
        }
        Ok(Verified { nonce })
    }

    /// The proof a driver answers `Register` with, for the caller's nonce.
    pub fn proof(&self, nonce: u128) -> String {
        self.sign(&proof_text(nonce))
    }

    /// Whether `proof` proves knowledge of the secret for `nonce`.
    pub fn proves(&self, nonce: u128, proof: &str) -> bool {
        self.verifies(&proof_text(nonce), proof)
    }
}

/// A process listening beyond loopback without a secret is open to whoever reaches it: refuse to
/// start unless the operator said the network is trusted.
pub fn check_exposure(
    what: &str,
    listen: SocketAddr,
    secret: Option<&ClusterSecret>,
    open_cluster: bool,
) -> Result<(), String> {
    if secret.is_some() || open_cluster || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "the {what} listens on {listen}, beyond loopback, without a cluster secret: anyone who \
         reaches it could join the cluster. Give the same secret to the driver and every \
         executor (--cluster-secret-file or WEIR_CLUSTER_SECRET), or pass \
         --insecure-open-cluster if the network is trusted (docs/operations.md, Security)"
    ))
}

/// Client side: adds a fresh credential to every call (nothing without a secret).
#[derive(Clone, Debug, Default)]
pub struct Sign(pub Option<ClusterSecret>);

impl tonic::service::Interceptor for Sign {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.0 {
            secret.attach(request.metadata_mut());
        }
        Ok(request)
    }
}

/// Nonces seen within the skew window, forgotten once a credential with them would be stale.
#[derive(Default)]
struct Seen {
    nonces: HashMap<u128, u64>,
    pruned_at: u64,
}

impl Seen {
    /// Records `nonce` (valid until `expires`); false when it was seen already.
    fn first_use(&mut self, nonce: u128, expires: u64, now: u64) -> bool {
        if now.saturating_sub(self.pruned_at) >= 1000 {
            self.nonces.retain(|_, e| *e > now);
            self.pruned_at = now;
        }
        self.nonces.insert(nonce, expires).is_none()
    }
}

struct GuardInner {
    secret: Option<ClusterSecret>,
    /// Which server this is, for the log (`driver`, `executor`).
    server: &'static str,
    seen: Mutex<Seen>,
    warned: Mutex<HashSet<IpAddr>>,
    on_refusal: Box<dyn Fn() + Send + Sync>,
}

/// Server side: refuses calls without a valid credential with `Unauthenticated`, counts each
/// refusal (`on_refusal`) and logs the first one of each peer. Without a secret every call
/// passes (an open cluster).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

impl Guard {
    pub fn new(
        server: &'static str,
        secret: Option<ClusterSecret>,
        on_refusal: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(GuardInner {
                secret,
                server,
                seen: Mutex::new(Seen::default()),
                warned: Mutex::new(HashSet::new()),
                on_refusal: Box::new(on_refusal),
            }),
        }
    }

    /// Checks the credential in `metadata` at time `now` (ms since the Unix epoch).
    pub fn admit(&self, metadata: &MetadataMap, now: u64) -> Result<Option<Verified>, Refusal> {
        let Some(secret) = &self.inner.secret else {
            return Ok(None);
        };
        let value = metadata
            .get(CREDENTIAL_HEADER)
            .ok_or(Refusal::Missing)?
            .to_str()
            .map_err(|_| Refusal::Malformed)?;
        let verified = secret.check(value, now)?;
        let expires = now + 2 * MAX_SKEW.as_millis() as u64;
        let first = self
            .inner
            .seen
            .lock()
            .map(|mut s| s.first_use(verified.nonce, expires, now))
            .unwrap_or(false);
        if !first {
            return Err(Refusal::Replayed);
        }
        Ok(Some(verified))
    }

    fn refused(&self, peer: Option<SocketAddr>, why: &Refusal) {
        (self.inner.on_refusal)();
        let ip = peer.map(|p| p.ip());
        let first = match (ip, self.inner.warned.lock()) {
            (Some(ip), Ok(mut warned)) if warned.len() < WARNED_PEERS => warned.insert(ip),
            _ => false,
        };
        if first {
            let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            tracing::warn!(
                %peer,
                "the {} refused a call: {why} (further refusals from this peer are only counted)",
                self.inner.server
            );
        }
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.admit(request.metadata(), now_ms()) {
            Ok(Some(verified)) => {
                request.extensions_mut().insert(verified);
                Ok(request)
            }
            Ok(None) => Ok(request),
            Err(why) => {
                self.refused(request.remote_addr(), &why);
                Err(Status::unauthenticated(format!(
                    "{why}; this port belongs to a weir cluster (docs/operations.md, Security)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    fn with_credential(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(CREDENTIAL_HEADER, value.parse().unwrap());
        m
    }

    fn counting_guard(secret: &str) -> (Guard, Arc<AtomicU64>) {
        let refused = Arc::new(AtomicU64::new(0));
        let count = refused.clone();
        let guard = Guard::new(
            "test",
            Some(ClusterSecret::from_text(secret).unwrap()),
            move || {
                count.fetch_add(1, Ordering::Relaxed);
            },
        );
        (guard, refused)
    }

    #[test]
    fn secrets_are_lines_of_at_least_32_characters() {
        assert_eq!(
            ClusterSecret::from_text("\n  \n").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            ClusterSecret::from_text(&format!("{A}\nshort\n")).unwrap_err(),
            SecretError::TooShort { line: 2, len: 5 }
        );
        let s = ClusterSecret::from_text(&format!("  {A}  \n\n{B}\n")).unwrap();
        assert_eq!(s.keys.len(), 2);
        assert!(!format!("{s:?}").contains(A));
        let generated = ClusterSecret::generate();
        assert_eq!(generated.len(), 64);
        assert_ne!(generated, ClusterSecret::generate());
        ClusterSecret::from_text(&generated).unwrap();
    }

    #[test]
    fn a_credential_passes_once_and_only_with_the_secret() {
        let (guard, _) = counting_guard(A);
        let mut meta = MetadataMap::new();
        let nonce = ClusterSecret::from_text(A).unwrap().attach(&mut meta);
        let value = meta.get(CREDENTIAL_HEADER).unwrap().to_str().unwrap();
        assert!(
            !value.contains(A),
            "the secret itself never goes on the wire"
        );
        assert_eq!(guard.admit(&meta, now_ms()), Ok(Some(Verified { nonce })));
        assert_eq!(guard.admit(&meta, now_ms()), Err(Refusal::Replayed));

        let (other, _) = counting_guard(B);
        let mut meta = MetadataMap::new();
        ClusterSecret::from_text(A).unwrap().attach(&mut meta);
        assert_eq!(other.admit(&meta, now_ms()), Err(Refusal::Mismatch));
        assert_eq!(
            other.admit(&MetadataMap::new(), now_ms()),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn stale_and_malformed_credentials_are_refused() {
        let (guard, _) = counting_guard(A);
        let secret = ClusterSecret::from_text(A).unwrap();
        let (value, _) = secret.credential();
        let later = now_ms() + MAX_SKEW.as_millis() as u64 + 10_000;
        assert!(matches!(
            guard.admit(&with_credential(&value), later),
            Err(Refusal::Skewed(s)) if s >= 300
        ));
        for bad in [
            "",
            "v1",
            "v2.1.2.3",
            "v1.x.00000000000000000000000000000000.00",
            "v1.1.short.00",
            "v1.1.00000000000000000000000000000000.zz",
            "v1.1.00000000000000000000000000000000.00.extra",
        ] {
            let refusal = guard.admit(&with_credential(bad), now_ms()).unwrap_err();
            assert!(
                matches!(refusal, Refusal::Malformed | Refusal::Mismatch),
                "{bad}: {refusal:?}"
            );
        }
        // A valid MAC over another time is still a mismatch once the time is changed.
        let mut parts: Vec<&str> = value.split('.').collect();
        let shifted = (parts[1].parse::<u64>().unwrap() + 1).to_string();
        parts[1] = &shifted;
        assert_eq!(
            guard.admit(&with_credential(&parts.join(".")), now_ms()),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn any_listed_secret_verifies_and_the_first_signs() {
        let rotating = ClusterSecret::from_text(&format!("{B}\n{A}")).unwrap();
        let (old, _) = counting_guard(A);
        let (new, _) = counting_guard(B);
        let (both, _) = counting_guard(&format!("{B}\n{A}"));
        let mut meta = MetadataMap::new();
        ClusterSecret::from_text(A).unwrap().attach(&mut meta);
        assert!(both.admit(&meta, now_ms()).is_ok(), "old credentials pass");
        let mut meta = MetadataMap::new();
        rotating.attach(&mut meta);
        assert!(new.admit(&meta, now_ms()).is_ok(), "signed with the first");
        assert_eq!(old.admit(&meta, now_ms()), Err(Refusal::Mismatch));
    }

    #[test]
    fn the_driver_proves_it_knows_the_secret() {
        let a = ClusterSecret::from_text(A).unwrap();
        let b = ClusterSecret::from_text(B).unwrap();
        let proof = a.proof(42);
        assert!(a.proves(42, &proof));
        assert!(!a.proves(43, &proof));
        assert!(!b.proves(42, &proof));
        assert!(!a.proves(42, "not hex"));
    }

    #[test]
    fn refusals_are_counted_and_an_open_guard_admits_all() {
        let (mut guard, refused) = counting_guard(A);
        use tonic::service::Interceptor;
        let status = guard.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("no cluster credential"));
        assert!(guard.call(Request::new(())).is_err());
        assert_eq!(refused.load(Ordering::Relaxed), 2);

        let mut open = Guard::new("test", None, || {});
        assert!(open.call(Request::new(())).is_ok());
    }

    #[test]
    fn only_loopback_may_listen_without_a_secret() {
        let secret = ClusterSecret::from_text(A).unwrap();
        let wide: SocketAddr = "0.0.0.0:7400".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        let err = check_exposure("control port", wide, None, false).unwrap_err();
        assert!(err.contains("--insecure-open-cluster"), "{err}");
        assert!(check_exposure("control port", wide, Some(&secret), false).is_ok());
        assert!(check_exposure("control port", wide, None, true).is_ok());
        assert!(check_exposure("control port", local, None, false).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(weir_common::testing::fuzzing::config(2000))]
        /// Whatever a caller puts in the header, without the secret it is refused, never
        /// admitted and never a panic; a real credential with any one character changed is
        /// refused too.
        #[test]
        fn any_credential_without_the_secret_is_refused(
            text in proptest::prop_oneof![
                "[ -~]{0,160}",
                "v1\\.[0-9]{1,20}\\.[0-9a-f]{30,34}\\.[0-9a-fA-F]{0,70}",
            ],
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let (guard, _) = counting_guard(A);
            if let Ok(value) = MetadataValue::try_from(text.as_str()) {
                let mut meta = MetadataMap::new();
                meta.insert(CREDENTIAL_HEADER, value);
                proptest::prop_assert!(guard.admit(&meta, now_ms()).is_err());
            }
            let (real, _) = ClusterSecret::from_text(A).unwrap().credential();
            let mut bytes = real.into_bytes();
            let i = flip.index(bytes.len());
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).unwrap();
            proptest::prop_assert!(guard.admit(&with_credential(&changed), now_ms()).is_err());
        }
    }
}
