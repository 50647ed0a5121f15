//! One HTTP POST delivered with retries: what the Pushgateway sink and the webhook alerts
//! share. Errors never carry the URL (it may hold a credential).

use std::time::Duration;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// POSTs `body`, retrying up to `retries` times (0.5 s, doubling, at most [`MAX_BACKOFF`])
/// until the server answers 2xx; the client's timeout bounds each attempt.
pub async fn post_with_retries(
    client: &reqwest::Client,
    url: &url::Url,
    content_type: &str,
    body: Vec<u8>,
    retries: u32,
) -> Result<(), String> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        let result = client
            .post(url.clone())
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await;
        let error = match result {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                format!("answered {status}: {}", text.trim())
            }
            Err(e) => e.without_url().to_string(),
        };
        if attempt >= retries {
            return Err(format!("{error} (after {} attempts)", attempt + 1));
        }
        tracing::debug!(attempt, "POST failed, retrying: {error}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}
