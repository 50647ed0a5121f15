//! Debian's `prometheus` scraping given targets every second, and `prometheus-pushgateway`,
//! both on 127.0.0.1 and read back through their HTTP APIs.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http;
use super::server::Server;

pub struct Prometheus {
    server: Server,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second.
    pub fn start(targets: &[String]) -> Prometheus {
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: weir\n    static_configs: [{{targets: [{list}]}}]\n"
        );
        let server = Server::start(
            "prometheus",
            "WEIR_PROMETHEUS",
            |address, dir| {
                std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
                vec![
                    "--config.file=prometheus.yml".into(),
                    format!("--storage.tsdb.path={}", dir.join("data").display()),
                    format!("--web.listen-address={address}"),
                ]
            },
            Duration::from_secs(60),
        );
        let prometheus = Prometheus { server };
        prometheus.wait_until(Duration::from_secs(60), |p| {
            http::get(&format!("{}/-/ready", p.server.url())).map(|_| ())
        });
        prometheus
    }

    /// The value of an instant query whose result is one sample (e.g. `sum(...)`); `None`
    /// while it has no sample.
    pub fn value(&self, query: &str) -> Option<f64> {
        let text = http::get_with(
            &format!("{}/api/v1/query", self.server.url()),
            &[("query", query)],
        )
        .unwrap_or_else(|e| panic!("querying Prometheus for `{query}`: {e}"));
        let answer: Value = serde_json::from_str(&text).expect("Prometheus answers JSON");
        let result = answer["data"]["result"].as_array()?;
        match result.as_slice() {
            [] => None,
            [one] => one["value"][1].as_str()?.parse().ok(),
            more => panic!("`{query}` has {} series: {answer}", more.len()),
        }
    }

    /// Polls `check` until it answers `Ok`; fails the test with its last complaint after
    /// `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let complaint = match check(self) {
                Ok(()) => return,
                Err(c) => c,
            };
            assert!(
                Instant::now() < deadline,
                "after {timeout:?}: {complaint} (Prometheus log: {})",
                self.server.log().display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

pub struct Pushgateway {
    server: Server,
}

impl Pushgateway {
    /// Starts a Pushgateway that keeps what it is pushed in memory only.
    pub fn start() -> Pushgateway {
        let server = Server::start(
            "prometheus-pushgateway",
            "WEIR_PUSHGATEWAY",
            |address, _| {
                vec![
                    format!("--web.listen-address={address}"),
                    "--persistence.file=".into(),
                ]
            },
            Duration::from_secs(30),
        );
        Pushgateway { server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The groups pushed so far (`/api/v1/metrics`).
    pub fn groups(&self) -> Vec<Value> {
        let text = http::get(&format!("{}/api/v1/metrics", self.server.url()))
            .unwrap_or_else(|e| panic!("reading the Pushgateway: {e}"));
        let answer: Value = serde_json::from_str(&text).expect("the Pushgateway answers JSON");
        answer["data"].as_array().cloned().unwrap_or_default()
    }
}

/// The value of metric `name` in a Pushgateway group.
pub fn pushed_value(group: &Value, name: &str) -> Option<f64> {
    group[name]["metrics"][0]["value"].as_str()?.parse().ok()
}
