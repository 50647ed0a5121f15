//! The driver's web dashboard in headless Chromium, against a running `weir local` of the
//! reference job with an admin token: the page asks for the token, then its figures (epoch,
//! input rows of the last epoch, executors; the epochs, executors and checkpoints pages) equal
//! what `weir admin ... --json` reports, its charts have data, and its console has no error.
//! Screenshots of each page go to the test's directory, and to WEIR_UI_SCREENSHOTS when set
//! (docs/ui/ holds the ones the README shows).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::admin::admin_json;
use support::local_run::start_with_token;
use support::webdriver::Browser;
use support::{reference_job, weir, Broker};

const TOKEN: &str = "ui-test-admin-token";
const EVENTS: u64 = 40_000;

fn produce(broker: &Broker, count: u64) {
    support::run_ok(
        weir()
            .args(["gen", "--brokers", &broker.address, "--topic", "web-events"])
            .args(["--partitions", "4", "--count", &count.to_string()])
            // Events up to now (the default start), so the watermark trails wall time as
            // in production.
            .args(["--seed", "3"]),
        "weir gen",
    );
}

/// Waits until the committed epochs have read `rows` in all; answers the last progress.
fn wait_for_input(url: &str, token: &Path, rows: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let recent = admin_json(
            url,
            &[
                "recent-progress",
                "--token-file",
                &token.display().to_string(),
            ],
            None,
        );
        let read: u64 = recent
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["numInputRows"].as_u64().unwrap())
            .sum();
        if read >= rows {
            return recent.as_array().unwrap().last().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "only {read} of {rows} rows read");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Shots {
    dirs: Vec<PathBuf>,
}

impl Shots {
    fn take(&self, browser: &Browser, name: &str) {
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).unwrap();
            let size = browser.screenshot(&dir.join(format!("{name}.png")));
            // A blank 1440x1000 page compresses to a few KB; a page of figures and charts
            // does not.
            assert!(
                size > 20_000,
                "the {name} screenshot is nearly empty ({size} bytes)"
            );
        }
    }
}

/// The figure a card shows (its data-value), once the page shows it.
const FIGURE: &str = "const e = document.querySelector(`[data-field='${arguments[0]}']`); \
                      return e && e.dataset.value !== undefined ? Number(e.dataset.value) : null;";

#[test]
fn the_dashboard_shows_what_the_admin_api_reports() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    produce(&broker, EVENTS);
    reference_job(dir.path(), &broker.address, 4_000);
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut local = start_with_token(dir.path(), &dir.path().join("job.yaml"), &token, 2);
    let ui = local.wait_for_line("weir driver ui on ", Duration::from_secs(60));
    let admin = local.wait_for_line("weir driver admin on ", Duration::from_secs(5));
    let token_arg = token.display().to_string();
    let admin_call = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token-file", &token_arg]);
        admin_json(&admin, &all, None)
    };
    let last = wait_for_input(&admin, &token, EVENTS);
    assert!(last["batchId"].as_u64().unwrap() >= 5, "{last}");

    // Without the token the API answers nothing.
    let refused = support::http::get(&format!("{ui}api/v1/progress")).unwrap_err();
    assert!(refused.starts_with("401"), "{refused}");

    let browser = Browser::start();
    let shots = Shots {
        dirs: std::iter::once(dir.path().join("screenshots"))
            .chain(std::env::var_os("WEIR_UI_SCREENSHOTS").map(PathBuf::from))
            .collect(),
    };
    browser.goto(&ui);
    browser.wait_for(
        "the token form",
        "return !document.getElementById('login').hidden;",
        Duration::from_secs(20),
    );
    browser.eval(
        "document.getElementById('token').value = arguments[0]; \
         document.getElementById('login').requestSubmit();",
        json!([TOKEN]),
    );

    // Overview: the charts fill with the epochs, and the figures are the admin API's.
    let points = browser.wait_for(
        "charts with data",
        "const c = document.querySelector(\"[data-chart='rates']\"); \
         return c && c.querySelector('canvas') && Number(c.dataset.points) >= 5 \
           ? Number(c.dataset.points) : null;",
        Duration::from_secs(30),
    );
    assert!(points.as_u64().unwrap() >= 5);
    for chart in [
        "rates",
        "input-rows",
        "phases",
        "watermark-gap",
        "late-dead",
        "state",
        "backlog",
        "executors",
    ] {
        let drawn = browser.eval(
            "const c = document.querySelector(`[data-chart='${arguments[0]}']`); \
             return !!(c && c.querySelector('canvas'));",
            json!([chart]),
        );
        assert_eq!(drawn, json!(true), "chart {chart} is not drawn");
    }
    // The job is idle once it has read everything, but poll until both agree anyway: the
    // page refreshes once a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let progress = admin_call(&["progress"]);
        let status = admin_call(&["status"]);
        let shown = (
            browser.eval(FIGURE, json!(["epoch"])),
            browser.eval(FIGURE, json!(["last-input-rows"])),
            browser.eval(FIGURE, json!(["executors"])),
            browser.eval(
                "return document.querySelector(\"[data-field='state']\").textContent;",
                json!([]),
            ),
        );
        let reported = (
            progress["batchId"].clone(),
            progress["numInputRows"].clone(),
            progress["numExecutors"].clone(),
            status[0]["state"].clone(),
        );
        if shown == reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows (epoch, input rows, executors, state) {shown:?}, weir admin {reported:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    shots.take(&browser, "overview");

    // Epochs: the newest first, each the admin API's, and a click shows its executors.
    browser.goto(&format!("{ui}#/epochs"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let recent = loop {
        let recent = admin_call(&["recent-progress"]);
        let rows = browser.eval(
            "return [...document.querySelectorAll('tr.epoch')] \
               .map(r => [Number(r.dataset.epoch), Number(r.children[2].textContent.replaceAll(',', ''))]);",
            json!([]),
        );
        let expected: Vec<Value> = recent
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|p| json!([p["batchId"], p["numInputRows"]]))
            .collect();
        if rows.as_array() == Some(&expected) {
            break recent;
        }
        assert!(
            Instant::now() < deadline,
            "the epochs table shows {rows}, weir admin recent-progress {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    browser.eval("document.querySelector('tr.epoch').click();", json!([]));
    let detail = browser.wait_for(
        "an epoch's executors",
        "const d = document.querySelector('tr.detail'); \
         return d ? [...d.querySelectorAll('tr')].slice(1).map(r => r.children[0].textContent) : null;",
        Duration::from_secs(10),
    );
    let newest = recent.as_array().unwrap().last().unwrap();
    let ids: Vec<Value> = newest["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["executorId"].clone())
        .collect();
    assert_eq!(detail.as_array().unwrap(), &ids);
    shots.take(&browser, "epochs");

    // Executors: the admin API's, with their key groups.
    browser.goto(&format!("{ui}#/executors"));
    let executors = admin_call(&["executors"]);
    let shown = browser.wait_for(
        "the executors table",
        "const rows = [...document.querySelectorAll('tr[data-executor]')]; \
         return rows.length ? rows.map(r => [r.dataset.executor, r.children[1].textContent]) : null;",
        Duration::from_secs(20),
    );
    let expected: Vec<Value> = executors
        .as_array()
        .unwrap()
        .iter()
        .map(|x| json!([x["executorId"], x["state"]]))
        .collect();
    assert_eq!(shown.as_array().unwrap(), &expected);
    assert_eq!(expected.len(), 2);
    shots.take(&browser, "executors");

    // Checkpoints: every executor's snapshot of the last epoch.
    browser.goto(&format!("{ui}#/checkpoints"));
    let snapshots = browser.wait_for(
        "the checkpoints table",
        "const rows = [...document.querySelectorAll(\"[data-table='checkpoints'] tr\")].slice(1); \
         return rows.length ? rows.map(r => r.children[0].textContent) : null;",
        Duration::from_secs(20),
    );
    assert_eq!(snapshots.as_array().unwrap(), &ids);
    let retention = browser.eval(
        "return document.querySelector(\"[data-field='retention']\").textContent;",
        json!([]),
    );
    assert_eq!(retention, json!("10 epochs"));
    shots.take(&browser, "checkpoints");

    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console has errors: {errors:?}");
}
