//! TLS everywhere, with a test CA made by the test (rcgen): every connection portshift
//! makes validates the peer's certificate, a private CA is trusted by adding its PEM
//! file, and nothing can turn validation off.
//! - NATS: a nats-server with a `tls {}` block (TLS 1.2 minimum); `tls://` with the CA
//!   works (JetStream round trip), without it or with another CA it fails with advice,
//!   and a `tls://` URL never falls back to a plaintext server.
//! - PostgreSQL: a throwaway cluster with `ssl = on` that accepts TLS connections only;
//!   `JobStore::connect` with `sslmode=verify-full&sslrootcert=...` works (and the
//!   session really is encrypted), another CA or a name not in the certificate fails,
//!   and `sslmode=require` (encryption without validation) is refused up front.
//! - Outbound HTTPS (`stages::http::client_builder`): a rustls server with a test-CA
//!   certificate is refused without the CA file, accepted with it, refused for a host
//!   name not in the certificate, and servers speaking only TLS 1.0 or 1.1 (OpenSSL's
//!   `s_server`) are refused.
//! - A scan of the source tree fails if a way to skip certificate validation appears.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use test_support::process::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A test PKI in a temporary folder: a CA, a server certificate it signed for
/// `localhost` and `127.0.0.1`, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("portshift test CA");
    let other = new_ca("some other CA");
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        other_ca: write("other-ca.pem", &other.pem()),
        cert: write("server.pem", &cert.pem()),
        key: write("server.key", &key.serialize_pem()),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
        dir,
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------

fn nats_server_bin() -> PathBuf {
    pipeline::embedded_nats::find_binary()
        .expect("nats-server: run scripts/test, or set PORTSHIFT_NATS_SERVER_BIN")
}

#[tokio::test]
async fn nats_over_tls_needs_the_ca_and_never_falls_back_to_plaintext() {
    let pki = pki();
    let port = free_port();
    let store = pki.dir.path().join("js");
    let conf = pki.dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{ store_dir: {:?} }}\n\
             tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  min_version: \"1.2\"\n  timeout: 2\n}}\n",
            store.display().to_string(),
            pki.cert.display().to_string(),
            pki.key.display().to_string(),
        ),
    )
    .unwrap();
    let log = pki.dir.path().join("nats.log");
    let mut server = tokio::process::Command::new(nats_server_bin())
        .arg("-c")
        .arg(&conf)
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port, "the TLS nats-server").await;

    let mut cases = 0;
    // With the CA: connected over TLS, and JetStream works through it.
    for url in [
        format!("tls://localhost:{port}"),
        format!("tls://127.0.0.1:{port}"),
    ] {
        let client = pipeline::config::connect_nats(&url, Some(&pki.ca))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let js = async_nats::jetstream::new(client.clone());
        pipeline::topology::ensure_streams(&js).await.unwrap();
        let job = pipeline::JobId::new();
        let subject = pipeline::topology::Stage::Notify.subject(&job);
        let id = format!("tls-{}", job.as_str());
        pipeline::topology::publish_json(
            &js,
            subject.clone(),
            &id,
            &serde_json::json!({"job": job.as_str()}),
        )
        .await
        .unwrap();
        let stream = js
            .get_stream(pipeline::topology::WORK_STREAM)
            .await
            .unwrap();
        let stored = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        assert!(stored.payload.starts_with(b"{\"job\""));
        client.flush().await.unwrap();
        cases += 1;
    }

    // Without the CA, with another CA, and via nats:// (the server requires TLS): refused,
    // with advice that names the fix.
    let refused = [
        (format!("tls://localhost:{port}"), None, "PORTSHIFT_CA_FILE"),
        (
            format!("tls://localhost:{port}"),
            Some(pki.other_ca.as_path()),
            "holds the CA that signed",
        ),
        (
            format!("nats://localhost:{port}"),
            None,
            "PORTSHIFT_CA_FILE",
        ),
    ];
    for (url, ca, advice) in refused {
        let started = Instant::now();
        let err = pipeline::config::connect_nats(&url, ca)
            .await
            .map(|_| ())
            .expect_err(&format!("{url} with {ca:?} must be refused"));
        let text = err.to_string();
        assert!(text.contains("TLS handshake failed"), "{url}: {text}");
        assert!(text.contains(advice), "{url}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
            "{url}: the cause is named: {text}"
        );
        assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
        cases += 1;
    }

    // A CA file that does not exist: a clear error, not a plaintext connection.
    let err = pipeline::config::connect_nats(
        &format!("tls://localhost:{port}"),
        Some(Path::new("/nonexistent/ca.pem")),
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert!(
        err.to_string().contains("could not connect to NATS"),
        "{err}"
    );
    cases += 1;

    // tls:// to a server without TLS: refused, never a silent plaintext connection.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = pipeline::embedded_nats::EmbeddedNats::start(plain_dir.path())
        .await
        .unwrap();
    let url = format!("tls://127.0.0.1:{}", plain.port());
    let err = pipeline::config::connect_nats(&url, Some(&pki.ca))
        .await
        .map(|_| ())
        .expect_err("a tls:// URL must not connect to a plaintext server");
    assert!(
        err.to_string().contains("could not connect to NATS"),
        "{err}"
    );
    cases += 1;
    plain.stop().await;

    let _ = server.kill().await;
    eprintln!("TLS cases (NATS): {cases}");
}

// ---------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL cluster that accepts TLS connections only, run as the
/// `postgres` user (it refuses root) in a temporary folder; stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        std::process::Command::new("env")
    };
    command
        .args(args)
        .current_dir("/")
        .output()
        .expect("run a PostgreSQL tool")
}

impl Postgres {
    fn start(pki: &Pki) -> Self {
        // /tmp, not the checkout: the postgres user must be able to traverse the path.
        let dir = tempfile::Builder::new()
            .prefix("portshift-tls-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        let key = dir.path().join("server.key");
        let cert = dir.path().join("server.pem");
        std::fs::copy(&pki.cert, &cert).unwrap();
        std::fs::copy(&pki.key, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres");
        }
        let initdb = format!("{PG_BIN}/initdb");
        let out = as_postgres(
            &[
                &[initdb.as_str(), "-D", data.to_str().unwrap()][..],
                &test_support::postgres::INITDB_FLAGS,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1,127.0.0.2'\nport = {port}\n\
             unix_socket_directories = '{}'\nssl = on\nssl_cert_file = '{}'\n\
             ssl_key_file = '{}'\nssl_min_protocol_version = 'TLSv1.2'\nfsync = off\n",
            dir.path().display(),
            cert.display(),
            key.display()
        );
        let append = |file: &str, text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join(file))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append("postgresql.conf", &conf);
        // TLS connections only over TCP: a plaintext one is refused by the server.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.0/8 trust\n",
        )
        .unwrap();
        let log = dir.path().join("postgres.log");
        let out = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Postgres { dir, port }
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}

#[tokio::test]
async fn postgres_with_verify_full_and_the_test_ca() {
    let pki = pki();
    let pg = Postgres::start(&pki);
    let ca = pki.ca.display().to_string();
    let other = pki.other_ca.display().to_string();
    let mut cases = 0;

    for host in ["localhost", "127.0.0.1"] {
        let url = pg.url(host, &format!("sslmode=verify-full&sslrootcert={ca}"));
        let store = pipeline::store::JobStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        store.close().await;
        // The same URL, asked directly: the session is encrypted with TLS 1.2 or 1.3.
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let (ssl, version): (bool, String) =
            sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(ssl, "{url}: not encrypted");
        assert!(
            matches!(version.as_str(), "TLSv1.2" | "TLSv1.3"),
            "{version}"
        );
        conn.close().await.unwrap();
        cases += 1;
    }

    // sslmode=verify-ca with the right name works too. (With sqlx on rustls 0.23 it also
    // checks the host name, so it is as strict as verify-full.)
    let url = pg.url("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    pipeline::store::JobStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .close()
        .await;
    cases += 1;

    let refused = [
        (
            pg.url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "another CA",
        ),
        (
            pg.url(
                "127.0.0.2",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "a name not in the certificate",
        ),
        (
            pg.url("localhost", "sslmode=verify-full"),
            "the system roots only",
        ),
        (pg.url("localhost", "sslmode=disable"), "plaintext"),
    ];
    for (url, what) in refused {
        let started = Instant::now();
        let err = pipeline::store::JobStore::connect(&url)
            .await
            .map(|_| ())
            .expect_err(&format!("{what}: {url} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains("could not open the job store"),
            "{what}: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: fails fast"
        );
        cases += 1;
    }

    // Modes that encrypt without validating are refused before connecting.
    for mode in ["require", "prefer", "allow", "REQUIRE"] {
        let url = pg.url("localhost", &format!("sslmode={mode}&sslrootcert={ca}"));
        let err = pipeline::store::JobStore::connect(&url)
            .await
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("without checking the server's certificate")
                && text.contains("sslmode=verify-full"),
            "{text}"
        );
        cases += 1;
    }
    eprintln!("TLS cases (PostgreSQL): {cases}");
}

// ---------------------------------------------------------------------------------
// Outbound HTTPS
// ---------------------------------------------------------------------------------

/// A minimal HTTPS server (rustls, TLS 1.2 and 1.3) answering `200 ok` to anything.
async fn https_server(pki: &Pki) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    match client.get(url).send().await {
        Ok(r) => Ok(r.text().await.map_err(|e| e.to_string())?),
        Err(e) => Err(stages::http::error_chain(&e)),
    }
}

/// `openssl s_server` offering only `version` (`-tls1`, `-tls1_1`), with the test
/// certificate; killed on drop.
fn legacy_server(pki: &Pki, version: &str) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = tokio::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&pki.cert)
        .arg("-key")
        .arg(&pki.key)
        // Debian's OpenSSL 3 allows TLS 1.0/1.1 only at security level 0.
        .args([version, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl (Debian package openssl) for the legacy TLS server");
    (child, port)
}

#[tokio::test]
async fn outbound_https_validates_and_trusts_only_what_it_is_given() {
    let pki = pki();
    let addr = https_server(&pki).await;
    let url = format!("https://localhost:{}/", addr.port());
    let mut cases = 0;

    let plain = stages::http::client_builder(None).unwrap().build().unwrap();
    let err = get(&plain, &url).await.expect_err("no CA file: refused");
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    cases += 1;

    let trusting = stages::http::client_builder(Some(&pki.ca))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(get(&trusting, &url).await.unwrap(), "ok");
    assert_eq!(
        get(&trusting, &format!("https://127.0.0.1:{}/", addr.port()))
            .await
            .unwrap(),
        "ok"
    );
    cases += 2;

    let other = stages::http::client_builder(Some(&pki.other_ca))
        .unwrap()
        .build()
        .unwrap();
    let err = get(&other, &url).await.expect_err("another CA: refused");
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    cases += 1;

    // The right CA but a name the certificate does not cover.
    let renamed = stages::http::client_builder(Some(&pki.ca))
        .unwrap()
        .resolve("not-in-the-certificate.test", addr)
        .build()
        .unwrap();
    let err = get(
        &renamed,
        &format!("https://not-in-the-certificate.test:{}/", addr.port()),
    )
    .await
    .expect_err("wrong name: refused");
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
    cases += 1;

    // Servers that speak only TLS 1.0 or 1.1: refused even though the CA is trusted.
    for version in ["-tls1", "-tls1_1"] {
        let (mut server, port) = legacy_server(&pki, version);
        wait_for_port(port, "openssl s_server").await;
        let err = get(&trusting, &format!("https://localhost:{port}/"))
            .await
            .expect_err(&format!("{version}: refused"));
        assert!(
            [
                "ProtocolVersion",
                "protocol version",
                "ncompatible",
                "UnsupportedVersion"
            ]
            .iter()
            .any(|w| err.contains(w)),
            "{version}: the refusal names the version: {err}"
        );
        let _ = server.kill().await;
        cases += 1;
    }
    // The legacy servers are real: OpenSSL itself completes a TLS 1.1 handshake there.
    let (mut server, port) = legacy_server(&pki, "-tls1_1");
    wait_for_port(port, "openssl s_server").await;
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-CAfile",
        ])
        .arg(&pki.ca)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("TLSv1.1"), "openssl s_client: {said}");
    let _ = server.kill().await;

    eprintln!("TLS cases (HTTPS): {cases}");
}

// ---------------------------------------------------------------------------------
// No way to switch validation off
// ---------------------------------------------------------------------------------

/// Every Rust source and manifest of the workspace (and the fuzz crate).
fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![];
    let mut stack: Vec<PathBuf> = [
        "Cargo.toml",
        "src",
        "pipeline",
        "stages",
        "ui",
        "tests",
        "fuzz",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            let name = path.file_name().unwrap_or_default();
            if name == "target" || name == "corpus" || name == "artifacts" {
                continue;
            }
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs") | Some("toml")
        ) {
            out.push(path);
        }
    }
    out
}

#[test]
fn nothing_in_the_source_can_switch_certificate_validation_off() {
    // Built from pieces; this file also documents them, so it is not scanned itself.
    let forbidden: Vec<String> = [
        ["danger", "_accept_invalid_certs"],
        ["danger", "_accept_invalid_hostnames"],
        ["accept_invalid", "_certs"],
        ["accept_invalid", "_hostnames"],
        [".danger", "ous()"],
        ["with_custom_certificate", "_verifier"],
        ["ServerCert", "Verifier"],
        ["NoCertificate", "Verification"],
        ["InsecureSkip", "Verify"],
        ["tls_insecure", ""],
        ["PgSslMode::", "Require"],
        ["PgSslMode::", "Prefer"],
        ["PgSslMode::", "Allow"],
        ["sslmode=", "require"],
        ["sslmode=", "prefer"],
        ["sslmode=", "allow"],
        ["Version::TLS_", "1_0"],
        ["Version::TLS_", "1_1"],
        ["native-", "tls"],
    ]
    .iter()
    .map(|p| p.concat())
    .collect();
    let files = sources();
    assert!(
        files.len() > 30,
        "the scan found the sources: {}",
        files.len()
    );
    let mut hits = vec![];
    let mut outside_http = vec![];
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        if path.ends_with("tests/tls.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            for needle in &forbidden {
                if line.contains(needle.as_str()) {
                    hits.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
        // Outbound HTTP clients are built in one place (pipeline/src/http_client.rs, reached
        // through stages::http's client_builder or no_redirect_client), which sets the TLS
        // rules; library code elsewhere must go through it (unit tests may not need to).
        let in_library = path.components().any(|c| c.as_os_str() == "src")
            && !path.ends_with("pipeline/src/http_client.rs");
        if in_library {
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for needle in [
                "reqwest::Client::builder(",
                "reqwest::Client::new(",
                "ClientBuilder::new()",
            ] {
                let uses_the_one_place = ["client_builder(", "no_redirect_client("]
                    .iter()
                    .any(|entry| code.contains(entry));
                if code.contains(needle) && !uses_the_one_place {
                    outside_http.push(format!("{}: {needle}", path.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "certificate validation could be switched off:\n{}",
        hits.join("\n")
    );
    assert!(
        outside_http.is_empty(),
        "HTTP clients built outside stages::http::client_builder:\n{}",
        outside_http.join("\n")
    );
    // And the one place keeps its rules.
    let http = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/src/http_client.rs"),
    )
    .unwrap();
    assert!(http.contains("min_tls_version(reqwest::tls::Version::TLS_1_2)"));
    assert!(http.contains("use_rustls_tls()"));
    eprintln!(
        "TLS source scan: {} files, {} patterns",
        files.len(),
        forbidden.len()
    );
}
