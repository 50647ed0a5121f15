//! Headless Chromium driven through ChromeDriver's W3C WebDriver API (Debian's `chromium` and
//! `chromium-driver`), as plain JSON over HTTP: open a page, run a script in it, take a
//! screenshot, read what the page logged to its console.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Browser {
    driver: Child,
    base: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

fn find(names: &[&str]) -> String {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return path.to_string_lossy().into_owned();
            }
        }
    }
    panic!("none of {names:?} is on PATH: scripts/setup.sh installs chromium and chromium-driver")
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and opens a headless Chromium session with
    /// a laptop-sized window.
    pub fn start() -> Self {
        let chromedriver = find(&["chromedriver"]);
        let chromium = find(&["chromium", "chromium-browser"]);
        let port = super::free_port();
        let driver = Command::new(chromedriver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            runtime,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while browser.call(reqwest::Method::GET, "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1440,1000",
                         "--hide-scrollbars", "--no-first-run"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session = browser
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .expect("a Chromium session");
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self
                .client
                .request(method, &url)
                .timeout(Duration::from_secs(60));
            if let Some(b) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            let answer: Value =
                serde_json::from_str(&text).map_err(|e| format!("{url}: {e}: {text}"))?;
            if status.is_success() {
                Ok(answer["value"].clone())
            } else {
                Err(format!("{url}: {status}: {}", answer["value"]))
            }
        })
    }

    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and answers what it
    /// returns.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Runs `script` until it returns something other than null or false, and answers that.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script, json!([]));
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the window to `path` and answers its size in bytes.
    pub fn screenshot(&self, path: &Path) -> usize {
        use base64::Engine;
        let data = self
            .call(reqwest::Method::GET, "/screenshot", None)
            .expect("a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("a base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, &png).expect("writing the screenshot");
        png.len()
    }

    /// What the page logged to the console at level SEVERE (errors, failed loads, refused
    /// scripts) since the last call.
    pub fn console_errors(&self) -> Vec<String> {
        let log = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .expect("the browser's console log");
        log.as_array()
            .expect("log entries")
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(reqwest::Method::DELETE, "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
