//! An S3 API server on 127.0.0.1 (moto_server, which enforces `If-None-Match` on put), with a
//! bucket, stopped when dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use object_store::ObjectStoreExt;

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

    /// Copies the files of the local directory `from` to `to` (`s3://bucket/prefix`).
    pub fn upload(&self, from: &Path, to: &str) {
        // object_store's option names are the variables' names in lower case.
        let options: BTreeMap<String, String> = [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
        ]
        .into_iter()
        .chain(CREDENTIALS)
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
        let location = weir_storage::location::open(to, &options).expect("the S3 location");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        for entry in std::fs::read_dir(from).expect("the directory to upload") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("a file to upload");
            runtime
                .block_on(location.store.put(&location.path(&name), bytes.into()))
                .unwrap_or_else(|e| panic!("uploading {name}: {e}"));
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
