//! An S3 API server on 127.0.0.1 (moto_server, which enforces `If-None-Match` on put), with a
//! bucket, stopped when dropped.

use std::time::Duration;

use super::server::Server;

pub struct S3Server {
    _server: Server,
    pub endpoint: String,
}

/// Credentials moto accepts; weir and the verifier read them from the environment.
pub const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let server = Server::start(
            "moto_server",
            "WEIR_MOTO",
            |address, _| {
                let (host, port) = address.split_once(':').expect("host:port");
                vec!["-H".into(), host.into(), "-p".into(), port.into()]
            },
            Duration::from_secs(60),
        );
        // moto accepts an unsigned CreateBucket.
        let endpoint = server.url();
        super::http::put(&format!("{endpoint}/{bucket}"))
            .unwrap_or_else(|e| panic!("CreateBucket failed: {e}"));
        S3Server {
            _server: server,
            endpoint,
        }
    }

    /// The job file's `storage_options` for this server.
    pub fn storage_options_yaml(&self) -> String {
        format!(
            "storage_options: {{aws_endpoint: \"{}\", aws_allow_http: \"true\"}}\n",
            self.endpoint
        )
    }
}
