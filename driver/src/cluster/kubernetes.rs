//! Keeps the executors' Deployment at the driver's target (docs/operations.md, Kubernetes).
//! Up: the replica count is raised as soon as the target is. Down: only once the executors
//! beyond the target were retired (an epoch without them decided, then told to exit), and their
//! pods are first marked as the ones to delete (`controller.kubernetes.io/pod-deletion-cost`),
//! so the ReplicaSet removes executors that already left rather than ones at work. Executor ids
//! are the pod names (`--id=$(POD_NAME)` in deploy/base/executors.yaml).
//!
//! The calls run in a task of their own, retried with backoff, so a slow or failing API server
//! never holds up an epoch; only the newest wish is sent.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The field manager the driver's patches are recorded under.
const FIELD_MANAGER: &str = "weir-driver";
/// Lower than any pod the operator annotated by hand is likely to be.
const LEAVER_DELETION_COST: &str = "-1000";
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The executors' Deployment, through the Kubernetes API.
#[derive(Clone)]
pub struct ExecutorDeployment {
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    pub name: String,
    pub namespace: String,
}

impl ExecutorDeployment {
    /// Connects with the in-cluster configuration (the pod's service account), or a kubeconfig
    /// outside a cluster; `namespace` defaults to the service account's.
    pub async fn connect(name: &str, namespace: Option<&str>) -> anyhow::Result<Self> {
        let client = Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account or kubeconfig)",
        )?;
        Ok(Self::new(client, name, namespace))
    }

    pub fn new(client: Client, name: &str, namespace: Option<&str>) -> Self {
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        Self {
            deployments: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client, &namespace),
            name: name.to_string(),
            namespace,
        }
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        }
    }

    /// Sets the Deployment's replicas through its scale subresource.
    async fn scale(&self, replicas: usize) -> Result<(), kube::Error> {
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        self.deployments
            .patch_scale(&self.name, &Self::params(), &patch)
            .await
            .map(|_| ())
    }

    /// Marks a retired executor's pod to be deleted first; a pod already gone is fine.
    async fn mark_leaver(&self, pod: &str) -> Result<(), kube::Error> {
        let patch = Patch::Merge(json!({
            "metadata": { "annotations": { DELETION_COST: LEAVER_DELETION_COST } }
        }));
        match self.pods.patch(pod, &Self::params(), &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What the Deployment should look like: `replicas`, with the pods of `retired` deleted first.
#[derive(Debug, Default)]
struct Wish {
    replicas: usize,
    retired: BTreeSet<String>,
}

/// The coordinator's handle: says what the Deployment should be, never waits for the API.
pub struct ReplicaFollower {
    tx: mpsc::UnboundedSender<Wish>,
    /// The replicas last asked for.
    asked: Option<usize>,
    task: JoinHandle<()>,
}

impl ReplicaFollower {
    pub fn start(deployment: ExecutorDeployment) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            asked: None,
            task: tokio::spawn(apply(deployment, rx)),
        }
    }

    fn ask(&mut self, replicas: usize, retired: Vec<String>) {
        self.asked = Some(replicas);
        let _ = self.tx.send(Wish {
            replicas,
            retired: retired.into_iter().collect(),
        });
    }

    /// Raises the replicas to `target` when they are below it (or were never set).
    pub fn up_to(&mut self, target: usize) {
        if self.asked.is_none_or(|a| target > a) {
            self.ask(target, Vec::new());
        }
    }

    /// Lowers the replicas to `target` once nothing beyond it runs: `retired` were just told to
    /// exit (their pods go first), or no executor was beyond the target.
    pub fn down_to(&mut self, target: usize, retired: Vec<String>) {
        if self.asked != Some(target) || !retired.is_empty() {
            self.ask(target, retired);
        }
    }
}

impl Drop for ReplicaFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Backoff between failed attempts: 1 s doubling to 30 s.
fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30))
}

/// Applies the newest wish, retrying until it holds or a newer one comes.
async fn apply(deployment: ExecutorDeployment, mut rx: mpsc::UnboundedReceiver<Wish>) {
    let mut failures = 0;
    let mut pending: Option<Wish> = None;
    loop {
        let next = match pending.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // Only the newest replicas matter; every retired pod still gets its mark.
        let mut wish = next;
        while let Ok(newer) = rx.try_recv() {
            wish.replicas = newer.replicas;
            wish.retired.extend(newer.retired);
        }
        match apply_one(&deployment, &wish).await {
            Ok(()) => {
                failures = 0;
                tracing::info!(
                    deployment = %deployment.name,
                    replicas = wish.replicas,
                    "scaled the executors' Deployment to {} replicas",
                    wish.replicas
                );
            }
            Err(e) => {
                failures += 1;
                let wait = retry_after(failures);
                tracing::warn!(
                    deployment = %deployment.name,
                    "scaling the executors' Deployment to {} replicas failed (again in {wait:?}): {e}",
                    wish.replicas
                );
                pending = Some(wish);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn apply_one(deployment: &ExecutorDeployment, wish: &Wish) -> Result<(), kube::Error> {
    for pod in &wish.retired {
        deployment.mark_leaver(pod).await?;
    }
    deployment.scale(wish.replicas).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;
    use tower_test::mock::Handle;

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    /// The next call: its method, path and JSON body, answered with `status` and `reply`.
    async fn next_call(
        api: &mut ApiHandle,
        status: StatusCode,
        reply: Value,
    ) -> (Method, String, Value) {
        let (request, respond) = api.next_request().await.expect("a call to the API");
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let method = request.method().clone();
        // Every patch is recorded under the driver's field manager.
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query
                .split('&')
                .any(|pair| pair == "fieldManager=weir-driver"),
            "{query}"
        );
        let uri = request.uri().path().to_string();
        let body = request.into_body().collect_bytes().await.unwrap();
        respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        (method, uri, serde_json::from_slice(&body).unwrap())
    }

    fn scale_reply(replicas: usize) -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": replicas}})
    }

    const SCALE: &str = "/apis/apps/v1/namespaces/weir/deployments/weir-executor/scale";

    #[tokio::test(start_paused = true)]
    async fn follows_the_target_up_at_once_and_down_after_marking_the_leavers() {
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "weir");
        let deployment = ExecutorDeployment::new(client, "weir-executor", None);
        assert_eq!(deployment.namespace, "weir");
        let mut follower = ReplicaFollower::start(deployment);

        follower.up_to(3);
        let (method, uri, body) = next_call(&mut api, StatusCode::OK, scale_reply(3)).await;
        assert_eq!((method, uri.as_str()), (Method::PATCH, SCALE));
        assert_eq!(body, json!({"spec": {"replicas": 3}}));
        // Already there: nothing is sent.
        follower.up_to(2);
        follower.up_to(3);

        // Down: the retired executor's pod is marked, then the replicas follow.
        follower.down_to(2, vec!["weir-executor-7d9f-x2".into()]);
        let (method, uri, body) = next_call(&mut api, StatusCode::OK, json!({})).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(uri, "/api/v1/namespaces/weir/pods/weir-executor-7d9f-x2");
        assert_eq!(
            body,
            json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000"}}})
        );
        let (_, uri, body) = next_call(&mut api, StatusCode::OK, scale_reply(2)).await;
        assert_eq!(uri, SCALE);
        assert_eq!(body, json!({"spec": {"replicas": 2}}));

        // A failed call is tried again (after the backoff) until the API takes it.
        follower.down_to(1, vec![]);
        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcd is busy", "reason": "ServiceUnavailable", "code": 503});
        let (_, uri, _) = next_call(&mut api, StatusCode::SERVICE_UNAVAILABLE, failure).await;
        assert_eq!(uri, SCALE);
        let (_, uri, body) = next_call(&mut api, StatusCode::OK, scale_reply(1)).await;
        assert_eq!(uri, SCALE);
        assert_eq!(body, json!({"spec": {"replicas": 1}}));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaver_whose_pod_is_gone_does_not_stop_the_scale_down() {
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let deployment =
            ExecutorDeployment::new(Client::new(service, "weir"), "weir-executor", None);
        let mut follower = ReplicaFollower::start(deployment);
        follower.down_to(1, vec!["gone".into()]);
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "pods \"gone\" not found", "reason": "NotFound", "code": 404});
        let (_, uri, _) = next_call(&mut api, StatusCode::NOT_FOUND, not_found).await;
        assert_eq!(uri, "/api/v1/namespaces/weir/pods/gone");
        let (_, uri, body) = next_call(&mut api, StatusCode::OK, scale_reply(1)).await;
        assert_eq!(uri, SCALE);
        assert_eq!(body, json!({"spec": {"replicas": 1}}));
    }
}
