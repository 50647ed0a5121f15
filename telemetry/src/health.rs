//! What a process tells a kubelet about itself (docs/operations.md, Probes): `GET /livez` answers
//! while the process serves requests; `GET /readyz` answers 200 once it can do its work, 503
//! with the reason before that (starting, registering, restoring state, stopping).

use tokio::sync::watch;

/// Whether a process is ready, shared by the parts that know and the endpoint that tells.
#[derive(Clone, Debug)]
pub struct Readiness(watch::Sender<Option<String>>);

impl Readiness {
    /// Not ready, for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(watch::Sender::new(Some(reason.into())))
    }

    pub fn set_ready(&self) {
        self.0.send_replace(None);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.0.send_replace(Some(reason.into()));
    }

    /// `Ok` when ready, else why not.
    pub fn state(&self) -> Result<(), String> {
        match &*self.0.borrow() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}
