//! TLS (feature `tls`): a throwaway `redis-server --tls-port` and a throwaway Postgres with
//! `ssl=on`, each with a server certificate for `localhost` signed by a CA the test makes
//! (rcgen). A connection checked against that CA publishes and consumes; a wrong CA, or a
//! host name the certificate does not name, is refused where the mode checks it; no error
//! shows a password.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use stream_runtime::conformance::{eventually, unique_name, Recorder};
use stream_runtime::{PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{run_as, skip_or_fail, spawn_kept, temp_dir};

/// PEM files of a CA and of a server certificate (for `localhost` only) it signed.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Another CA, which signed nothing here.
    other_ca: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("the CA certificate");
    (cert, key)
}

fn make_certs(dir: &Path) -> Certs {
    let (ca, ca_key) = make_ca("stream-tests CA");
    let (other, _) = make_ca("stream-tests other CA");
    let key = KeyPair::generate().expect("a server key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("server cert params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("the server certificate");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("writing a PEM file");
        path
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server under a keeper shell; stopped (by pid) when dropped.
struct Kept {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const REDIS_PASSWORD: &str = "tls-s3cret-pw";

/// A TLS-only redis-server with a password, or `None` (a loud skip).
async fn tls_redis() -> Option<(Kept, u16, Certs)> {
    let dir = temp_dir("redis-tls");
    let certs = make_certs(&dir);
    let port = free_port();
    let args: Vec<OsString> = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string().into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--tls-cert-file".into(),
        certs.cert.clone().into(),
        "--tls-key-file".into(),
        certs.key.clone().into(),
        "--tls-ca-cert-file".into(),
        certs.ca.clone().into(),
        "--tls-auth-clients".into(),
        "no".into(),
        "--requirepass".into(),
        REDIS_PASSWORD.into(),
        "--save".into(),
        "".into(),
        "--dir".into(),
        dir.clone().into(),
    ];
    let (child, stdin) = match spawn_kept(None, "redis-server", &args, "TERM") {
        Ok(kept) => kept,
        Err(e) => return skip_or_fail("redis-server (TLS)", &e),
    };
    let server = Kept {
        child,
        stdin: Some(stdin),
        dir,
    };
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    if !up {
        return skip_or_fail("redis-server (TLS)", "did not listen within 10 s");
    }
    Some((server, port, certs))
}

fn redis_tls_url(host: &str, port: u16, ca: &Path) -> String {
    format!(
        "rediss://:{REDIS_PASSWORD}@{host}:{port}/?cacert={}",
        ca.display()
    )
}

/// Publishes one message and consumes it through a service on `url`.
async fn round_trip(url: &str) {
    let service = Service::connect(url, ServiceConfig::default().app(unique_name("tls")))
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}"));
    let rec = Recorder::new();
    service
        .subscribe(
            "secure",
            "g",
            rec.handler(),
            SubscribeOptions::new().poll_interval(Duration::from_millis(50)),
        )
        .await
        .expect("subscribe");
    service
        .publish("secure", "over tls", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_payload("over tls").await;
    service.close().await.expect("close");
}

/// Connecting must fail; the error may not show the password.
async fn refused(url: &str, secret: &str) -> String {
    match Service::connect(
        url,
        ServiceConfig::default()
            .app(unique_name("tls"))
            .connect_timeout(Duration::from_secs(5)),
    )
    .await
    {
        Ok(_) => panic!(
            "connected to {} although it must be refused",
            url.replace(secret, "***")
        ),
        Err(e) => {
            let text = format!("{e} / {e:?}");
            assert!(
                !text.contains(secret),
                "the error shows the password: {text}"
            );
            text
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_publishes_and_consumes() {
    let Some((_server, port, certs)) = tls_redis().await else {
        return;
    };
    round_trip(&redis_tls_url("localhost", port, &certs.ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_refuses_a_wrong_ca_or_host_name() {
    let Some((_server, port, certs)) = tls_redis().await else {
        return;
    };
    // Signed by another CA.
    let text = refused(
        &redis_tls_url("localhost", port, &certs.other_ca),
        REDIS_PASSWORD,
    )
    .await;
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // Not in the system's roots either.
    refused(
        &format!("rediss://:{REDIS_PASSWORD}@localhost:{port}"),
        REDIS_PASSWORD,
    )
    .await;
    // The certificate names localhost, not 127.0.0.1.
    let text = refused(&redis_tls_url("127.0.0.1", port, &certs.ca), REDIS_PASSWORD).await;
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // A plain connection to the TLS port gets no answer it can read.
    refused(
        &format!("redis://:{REDIS_PASSWORD}@localhost:{port}"),
        REDIS_PASSWORD,
    )
    .await;
}

/// A throwaway Postgres with `ssl=on` (initdb and postgres from /usr/lib/postgresql/*/bin,
/// run as the `postgres` user when this runs as root), or `None` (a loud skip).
fn tls_postgres() -> Option<(Kept, u16, Certs)> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| v.ok().map(|v| v.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .max()
        });
    let Some(bin) = bin else {
        return skip_or_fail("postgres (TLS)", "no /usr/lib/postgresql/*/bin/initdb");
    };
    let dir = temp_dir("postgres-tls");
    let data = dir.join("data");
    let user = stream_tests::is_root().then_some("postgres");
    let owned = |path: &Path| {
        if user.is_some() {
            run_as(
                None,
                "chown",
                &["-R".into(), "postgres:".into(), path.into()],
            )
        } else {
            Ok(())
        }
    };
    let start = || -> Result<(Kept, u16, Certs), String> {
        std::fs::create_dir_all(&data).map_err(|e| format!("creating the data dir: {e}"))?;
        owned(&dir)?;
        run_as(
            user,
            &bin.join("initdb").to_string_lossy(),
            &[
                "-D".into(),
                data.clone().into(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "--no-sync".into(),
            ],
        )?;
        let certs = make_certs(&data);
        owned(&data)?;
        std::fs::set_permissions(
            &certs.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| format!("chmod of the key: {e}"))?;
        let port = free_port();
        let args: Vec<OsString> = vec![
            "-D".into(),
            data.clone().into(),
            "-p".into(),
            port.to_string().into(),
            "-k".into(),
            data.clone().into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={}", certs.cert.display()).into(),
            "-c".into(),
            format!("ssl_key_file={}", certs.key.display()).into(),
            "-c".into(),
            "fsync=off".into(),
        ];
        let (child, stdin) =
            spawn_kept(user, &bin.join("postgres").to_string_lossy(), &args, "INT")?;
        let server = Kept {
            child,
            stdin: Some(stdin),
            dir: dir.clone(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("postgres did not listen within 30 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((server, port, certs))
    };
    match start() {
        Ok(started) => Some(started),
        Err(e) => skip_or_fail("postgres (TLS)", &e),
    }
}

fn pg_tls_url(host: &str, port: u16, mode: &str, ca: &Path) -> String {
    format!(
        "postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={}",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_publishes_and_consumes() {
    let Some((_server, port, certs)) = tokio::task::spawn_blocking(tls_postgres)
        .await
        .expect("starting postgres")
    else {
        return;
    };
    for mode in ["require", "verify-ca", "verify-full"] {
        round_trip(&pg_tls_url("localhost", port, mode, &certs.ca)).await;
    }
    // `require` encrypts without checking the certificate: another CA is no matter.
    round_trip(&pg_tls_url("localhost", port, "require", &certs.other_ca)).await;

    let text = refused(
        &pg_tls_url("localhost", port, "verify-full", &certs.other_ca),
        "no secret here",
    )
    .await;
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    refused(
        &pg_tls_url("localhost", port, "verify-ca", &certs.other_ca),
        "no secret here",
    )
    .await;
    let text = refused(
        &pg_tls_url("127.0.0.1", port, "verify-full", &certs.ca),
        "no secret here",
    )
    .await;
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}
