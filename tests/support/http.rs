//! Plain HTTP calls for tests: reqwest on a runtime of its own, in a thread of its own, so
//! synchronous tests and `#[tokio::test]`s alike can call them.

use std::time::Duration;

use reqwest::{Method, Url};

fn call(method: Method, url: &str) -> Result<String, String> {
    let url = Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let response = client
                .request(method, url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(text)
            } else {
                Err(format!("{status}: {text}"))
            }
        })
    })
    .join()
    .expect("the HTTP thread")
}

/// GETs `url`; an error for no answer or a status other than 2xx.
pub fn get(url: &str) -> Result<String, String> {
    call(Method::GET, url)
}

/// GETs `url` with the query parameters `params`.
pub fn get_with(url: &str, params: &[(&str, &str)]) -> Result<String, String> {
    let url = Url::parse_with_params(url, params).map_err(|e| e.to_string())?;
    call(Method::GET, url.as_str())
}

/// PUTs an empty body to `url`.
pub fn put(url: &str) -> Result<String, String> {
    call(Method::PUT, url)
}

/// The value of the unlabelled sample `name` in a Prometheus text page.
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
