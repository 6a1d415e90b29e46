//! An S3 endpoint for tests: moto's server (`pip install "moto[server]"`, which
//! `scripts/ensure-tools` installs), an emulator of the S3 API, on a free port, with one
//! empty bucket. It is not AWS: it shows that the object-store wiring speaks S3 (signed
//! requests, listing, conditional puts), not how S3 behaves under load.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server; stopped when dropped.
#[derive(Debug)]
pub struct MotoS3 {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl MotoS3 {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::other(format!(
                    "starting moto_server (`scripts/ensure-tools` installs it): {e}"
                ))
            })?;
        let this = Self {
            child,
            port,
            bucket: bucket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("moto_server did not listen within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        this.create_bucket()?;
        Ok(this)
    }

    /// `PUT /<bucket>`: moto accepts it unsigned.
    fn create_bucket(&self) -> io::Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating bucket {}: {}",
                self.bucket,
                answer.lines().next().unwrap_or_default()
            )))
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The object-store settings that reach it (keys as `object_store`'s S3 config names).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "testing".to_owned()),
            ("aws_secret_access_key", "testing".to_owned()),
            ("aws_virtual_hosted_style_request", "false".to_owned()),
        ]
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
