//! An S3 API server on 127.0.0.1 (moto_server, which enforces `If-None-Match` on put), with a
//! bucket, stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_port};

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
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
        let moto = std::env::var("WEIR_MOTO").unwrap_or_else(|_| "moto_server".into());
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log file");
        let mut child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{moto}` ({e}); run scripts/setup.sh to install it")
            });
        let address = format!("127.0.0.1:{port}");
        wait_for_port(
            &mut child,
            &address,
            &dir.path().join("moto.log"),
            Duration::from_secs(60),
        );
        let server = S3Server {
            child,
            endpoint: format!("http://{address}"),
            _dir: dir,
        };
        server.create_bucket(&address, bucket);
        server
    }

    /// moto accepts an unsigned CreateBucket: one plain HTTP request.
    fn create_bucket(&self, address: &str, bucket: &str) {
        let mut stream = TcpStream::connect(address).expect("connecting to moto");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("CreateBucket request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("CreateBucket answer");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "CreateBucket failed: {answer}"
        );
    }

    /// The job file's `storage_options` for this server.
    pub fn storage_options_yaml(&self) -> String {
        format!(
            "storage_options: {{aws_endpoint: \"{}\", aws_allow_http: \"true\"}}\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
