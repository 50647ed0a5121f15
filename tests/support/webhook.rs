//! A webhook receiver on 127.0.0.1 for alert tests: records every request body, and answers
//! the first `failures` requests with 500 so senders must retry.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

pub struct Webhook {
    pub url: String,
    requests: mpsc::Receiver<(String, String, u16)>,
}

/// One request: its path, body and the status it was answered with.
pub type Received = (String, String, u16);

impl Webhook {
    pub fn start(path: &str, failures: usize) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the webhook receiver");
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let status = if n < failures { 500 } else { 200 };
                let reason = if status == 200 {
                    "OK"
                } else {
                    "Internal Server Error"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.flush();
                if tx
                    .send((path, String::from_utf8_lossy(&body).into_owned(), status))
                    .is_err()
                {
                    break;
                }
            }
        });
        Webhook { url, requests }
    }

    /// The `text` of every Slack-style alert received so far, waiting up to `quiet` for each
    /// further one.
    pub fn texts(&self, quiet: Duration) -> Vec<String> {
        self.received(quiet)
            .into_iter()
            .map(|(_, body, _)| {
                let alert: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
                alert["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no Slack text: {body}"))
                    .to_string()
            })
            .collect()
    }

    /// The requests received so far, waiting up to `quiet` for each further one.
    pub fn received(&self, quiet: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(r) = self.requests.recv_timeout(quiet) {
            all.push(r);
        }
        all
    }
}
