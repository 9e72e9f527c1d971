//! One behaviour suite for every destination (the arrow-rs `object_store` way): each
//! promise of the `Destination` trait is checked against the local folder, S3 (the
//! project's SeaweedFS server), Azure Blob (Azurite) and GCS (fake-gcs-server), all
//! started by `scripts/test`. Then what only one provider has: Azure SAS permissions,
//! the GCS resumable resume from the server's committed offset (gcp-storage-emulator),
//! and an emulator stopped mid-file.

use bytes::Bytes;
use futures::StreamExt;
use stages::destination::{
    self, ByteStream, Destination, DestinationCredentials, DestinationError, DestinationUrl, Tuning,
};
use test_support::cloud::{
    azure_container_at as azure_container, cloud_py, counting_token_server as token_server,
    gcs_bucket, service_account_json,
};
use test_support::env_or_fail;
use test_support::process::free_port;
use test_support::s3::{fresh_bucket, s3_client, s3_credentials};

const MIB: usize = 1024 * 1024;

/// Bodies of announced length up to 11 MiB go in one streamed request where the store
/// offers it (S3); the 12 MiB case goes in parts.
fn tuning() -> Tuning {
    Tuning {
        part_size: 5 * MIB,
        parts_in_flight: 2,
        single_request_max: 11 * MIB as u64,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A body delivered in uneven chunks, optionally failing after `fail_after` bytes.
fn body(data: Vec<u8>, fail_after: Option<usize>) -> ByteStream {
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = Vec::new();
    let mut off = 0;
    let mut step = 7919;
    while off < data.len() {
        if let Some(limit) = fail_after
            && off >= limit
        {
            chunks.push(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source cut short",
            )));
            return Box::pin(futures::stream::iter(chunks));
        }
        let end = (off + step).min(data.len());
        chunks.push(Ok(Bytes::copy_from_slice(&data[off..end])));
        off = end;
        step = (step * 3) % 700_000 + 1000;
    }
    Box::pin(futures::stream::iter(chunks))
}

async fn read_back(d: &dyn Destination, path: &str) -> Result<Vec<u8>, DestinationError> {
    let mut s = d.open(path).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.map_err(DestinationError::Source)?);
    }
    Ok(out)
}

async fn local() -> (Box<dyn Destination>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url: DestinationUrl = format!("file://{}/export", dir.path().display())
        .parse()
        .unwrap();
    (destination::open(&url, None, &tuning()).await.unwrap(), dir)
}

async fn s3() -> (Box<dyn Destination>, tempfile::TempDir) {
    let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    let (_, bucket) = s3_admin_with_bucket().await;
    (
        s3_dest_at(&endpoint, &bucket, "suite", "").await,
        tempfile::tempdir().unwrap(),
    )
}

/// An Azure destination at `url` with the SAS token `sas`.
async fn open_azure(url: &str, sas: &str) -> Box<dyn Destination> {
    let creds: pipeline::secrets::AzureCredentials =
        serde_json::from_value(serde_json::json!({ "sas_token": sas })).unwrap();
    destination::open_with(
        &url.parse::<DestinationUrl>().unwrap(),
        DestinationCredentials {
            azure: Some(&creds),
            ..Default::default()
        },
        &tuning(),
        None,
    )
    .await
    .unwrap()
}

async fn azure_dest(endpoint: &str, container: &str, sas: &str) -> Box<dyn Destination> {
    let account = env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT");
    open_azure(
        &format!("azure://{account}/{container}/suite?endpoint={endpoint}"),
        sas,
    )
    .await
}

async fn azure() -> (Box<dyn Destination>, tempfile::TempDir) {
    let endpoint = env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT");
    // Read too: the suite reads every object back through the destination.
    let (container, sas) = azure_container(&endpoint, "rcw");
    (
        azure_dest(&endpoint, &container, &sas).await,
        tempfile::tempdir().unwrap(),
    )
}

/// A GCS destination at `url` with a service-account key whose token endpoint is
/// `token_uri`.
async fn open_gcs(url: &str, token_uri: &str) -> Box<dyn Destination> {
    let creds: pipeline::secrets::GcsCredentials = serde_json::from_value(
        serde_json::json!({ "service_account_json": service_account_json(token_uri) }),
    )
    .unwrap();
    destination::open_with(
        &url.parse::<DestinationUrl>().unwrap(),
        DestinationCredentials {
            gcs: Some(&creds),
            ..Default::default()
        },
        &tuning(),
        None,
    )
    .await
    .unwrap()
}

async fn gcs_dest(endpoint: &str, bucket: &str, token_uri: &str) -> Box<dyn Destination> {
    open_gcs(
        &format!("gs://{bucket}/suite?endpoint={endpoint}"),
        token_uri,
    )
    .await
}

/// Writes `k.bin`, `len` bytes of a pattern; what the write returned.
async fn put_pattern(
    d: &dyn Destination,
    len: usize,
) -> Result<destination::Written, DestinationError> {
    d.put(
        "k.bin",
        body(pattern(len, 1), None),
        "application/octet-stream",
        None,
    )
    .await
}

async fn gcs() -> (Box<dyn Destination>, tempfile::TempDir) {
    let endpoint = env_or_fail("PORTSHIFT_TEST_GCS_ENDPOINT");
    let bucket = gcs_bucket(&endpoint);
    let (token_uri, _) = token_server().await;
    (
        gcs_dest(&endpoint, &bucket, &token_uri).await,
        tempfile::tempdir().unwrap(),
    )
}

async fn small_and_large_files_arrive_intact(d: Box<dyn Destination>) {
    for (path, len) in [
        ("a/small.bin", 1000),
        ("a/empty.bin", 0),
        ("b/exactly-one-part.bin", 5 * MIB),
        // Ends exactly on a part boundary: no part is known to be the last when sent.
        ("b/exactly-two-parts.bin", 10 * MIB),
        ("b/large.bin", 12 * MIB + 17),
    ] {
        let data = pattern(len, 3);
        let w = d
            .put(
                path,
                body(data.clone(), None),
                "application/octet-stream",
                Some(len as u64),
            )
            .await
            .unwrap();
        assert_eq!(w.bytes, len as u64, "{path}");
        assert_eq!(read_back(d.as_ref(), path).await.unwrap(), data, "{path}");
    }
}

async fn a_failing_body_leaves_no_object(d: Box<dyn Destination>) {
    // (path, bytes the body has, where it breaks, the length announced for it)
    for (path, len, fail, announced) in [
        ("cut/single.bin", 3 * MIB, Some(MIB), None),
        ("cut/multi.bin", 14 * MIB, Some(11 * MIB), None),
        ("cut/streamed.bin", 8 * MIB, Some(3 * MIB), Some(8 * MIB)),
        (
            "cut/multi-announced.bin",
            14 * MIB,
            Some(11 * MIB),
            Some(14 * MIB),
        ),
        // Whole bodies that differ from their announced length.
        ("cut/shorter.bin", 6 * MIB, None, Some(8 * MIB)),
        ("cut/longer.bin", 9 * MIB, None, Some(8 * MIB)),
    ] {
        let err = d
            .put(
                path,
                body(pattern(len, 5), fail),
                "application/octet-stream",
                announced.map(|n| n as u64),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, DestinationError::Source(_)), "{path}: {err}");
        assert!(
            matches!(
                read_back(d.as_ref(), path).await,
                Err(DestinationError::NotFound(_))
            ),
            "{path} exists after a failed write"
        );
    }
}

async fn rewriting_a_key_replaces_it(d: Box<dyn Destination>) {
    let first = pattern(6 * MIB, 1);
    let second = pattern(2000, 2);
    d.put(
        "x/same.bin",
        body(first, None),
        "application/octet-stream",
        None,
    )
    .await
    .unwrap();
    d.put(
        "x/same.bin",
        body(second.clone(), None),
        "application/octet-stream",
        None,
    )
    .await
    .unwrap();
    assert_eq!(read_back(d.as_ref(), "x/same.bin").await.unwrap(), second);
    // A failed rewrite keeps the previous complete object, never a partial one, whether
    // its length was announced (one streamed request on S3) or not (parts).
    for announced in [None, Some(7 * MIB as u64)] {
        let _ = d
            .put(
                "x/same.bin",
                body(pattern(7 * MIB, 9), Some(6 * MIB)),
                "application/octet-stream",
                announced,
            )
            .await
            .unwrap_err();
        assert_eq!(
            read_back(d.as_ref(), "x/same.bin").await.unwrap(),
            second,
            "{announced:?}"
        );
    }
}

async fn keys_cannot_escape_the_prefix(d: Box<dyn Destination>) {
    for bad in [
        "../escape.bin",
        "a/../../b",
        "/abs",
        "a//b",
        "with space",
        "new\nline",
        "back\\slash",
        "",
    ] {
        let err = d
            .put_bytes(bad, Bytes::from_static(b"x"), "text/plain")
            .await
            .unwrap_err();
        assert!(
            matches!(err, DestinationError::UnsafeKey(_)),
            "{bad:?}: {err}"
        );
    }
}

macro_rules! suite {
    ($($case:ident),*) => {
        mod local_folder { $( #[tokio::test(flavor = "multi_thread")] async fn $case() { let (d, _t) = super::local().await; super::$case(d).await; } )* }
        mod s3 { $( #[tokio::test(flavor = "multi_thread")] async fn $case() { let (d, _t) = super::s3().await; super::$case(d).await; } )* }
        mod azure { $( #[tokio::test(flavor = "multi_thread")] async fn $case() { let (d, _t) = super::azure().await; super::$case(d).await; } )* }
        mod gcs { $( #[tokio::test(flavor = "multi_thread")] async fn $case() { let (d, _t) = super::gcs().await; super::$case(d).await; } )* }
    };
}

suite!(
    small_and_large_files_arrive_intact,
    a_failing_body_leaves_no_object,
    rewriting_a_key_replaces_it,
    keys_cannot_escape_the_prefix
);

#[tokio::test]
async fn local_writes_leave_no_temporary_files() {
    let (d, dir) = local().await;
    d.put("a/ok.bin", body(pattern(3000, 1), None), "x", None)
        .await
        .unwrap();
    let _ = d
        .put("a/bad.bin", body(pattern(3 * MIB, 1), Some(MIB)), "x", None)
        .await;
    let names: Vec<String> = std::fs::read_dir(dir.path().join("export/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ok.bin".to_string()]);
}

#[tokio::test]
async fn s3_with_a_wrong_secret_is_refused_with_advice() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    let creds: pipeline::secrets::S3Credentials = serde_json::from_value(serde_json::json!({
        "access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        "secret_access_key": "wrong-secret-CANARY",
    }))
    .unwrap();
    let url: DestinationUrl = format!("s3://any-bucket/p?endpoint={endpoint}")
        .parse()
        .unwrap();
    let d = destination::open(&url, Some(&creds), &tuning())
        .await
        .unwrap();
    let err = d
        .put_bytes("f.txt", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("credentials") || text.contains("denied"),
        "{text}"
    );
    assert!(
        !text.contains("CANARY"),
        "the secret leaked into the error: {text}"
    );
}

/// Least privilege on Azure: a SAS with only create+write does everything an export
/// does (single puts, staged blocks, overwrites); one without write is refused with an
/// error that names the missing permission.
#[tokio::test(flavor = "multi_thread")]
async fn azure_create_write_sas_is_enough_and_one_without_write_is_refused() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT");
    let (container, sas) = azure_container(&endpoint, "cw");
    let d = azure_dest(&endpoint, &container, &sas).await;
    for (path, len) in [("a/small.bin", 1000), ("a/large.bin", 12 * MIB + 5)] {
        for seed in [1, 2] {
            d.put(
                path,
                body(pattern(len, seed), None),
                "application/octet-stream",
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{path} with a create+write SAS: {e}"));
        }
    }
    // Read back with the account key, through Microsoft's SDK.
    let copy = tempfile::tempdir().unwrap();
    let listing: serde_json::Value = serde_json::from_str(&cloud_py(&[
        "azure-download",
        &endpoint,
        &env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_KEY"),
        &container,
        "suite",
        copy.path().to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(listing["objects"].as_object().unwrap().len(), 2);
    assert_eq!(
        std::fs::read(copy.path().join("a/large.bin")).unwrap(),
        pattern(12 * MIB + 5, 2)
    );
    // Reading needs a permission portshift does not ask for.
    assert!(matches!(
        d.open("a/small.bin").await,
        Err(DestinationError::Refused { .. })
    ));

    let create_only = cloud_py(&[
        "azure-sas",
        &endpoint,
        &env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT"),
        &env_or_fail("PORTSHIFT_TEST_AZURE_KEY"),
        &container,
        "c",
    ]);
    let d = azure_dest(&endpoint, &container, &create_only).await;
    for (path, len) in [("a/small.bin", 1000), ("b/large.bin", 12 * MIB)] {
        let err = d
            .put(
                path,
                body(pattern(len, 3), None),
                "application/octet-stream",
                None,
            )
            .await
            .unwrap_err();
        assert!(err.is_refused(), "{path}: {err}");
        let text = err.to_string();
        assert!(text.contains("write (w)"), "{path}: {text}");
        assert!(!text.contains("sig="), "the SAS token leaked: {text}");
    }
}

/// The GCS destination gets its token from the service-account key's token endpoint,
/// once, and reuses it.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_uses_the_service_account_key_and_caches_the_token() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_GCS_ENDPOINT");
    let bucket = gcs_bucket(&endpoint);
    let (token_uri, calls) = token_server().await;
    let d = gcs_dest(&endpoint, &bucket, &token_uri).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    for i in 0..3 {
        d.put_bytes(
            &format!("t/{i}.txt"),
            Bytes::from_static(b"x"),
            "text/plain",
        )
        .await
        .unwrap();
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A TCP proxy that cuts the first connection through which more than `cut_after`
/// client bytes have passed in total, and watches the client bytes for `needle`.
struct CuttingProxy {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen_needle: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn cutting_proxy(upstream: &str, cut_after: usize, needle: &'static [u8]) -> CuttingProxy {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let total = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicBool::new(false));
    let (cut2, seen2) = (cut.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (total, cut, seen) = (total.clone(), cut2.clone(), seen2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[..n].windows(needle.len()).any(|w| w == needle) {
                        seen.store(true, Ordering::SeqCst);
                    }
                    let before = total.fetch_add(n, Ordering::SeqCst);
                    if before + n > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        // Forward part of this read, then drop both sides mid-request.
                        let _ = sw.write_all(&buf[..n / 2]).await;
                        return;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    CuttingProxy {
        url,
        cut,
        seen_needle: seen,
    }
}

/// GCS resumable uploads continue from the offset the server says it committed: the
/// connection is cut in the middle of the second chunk, the destination asks the
/// session what it holds (`Content-Range: bytes */*`) and sends the rest, all within
/// one `put` of a stream that cannot be read twice. Runs against gcp-storage-emulator,
/// which answers the status query correctly (fake-gcs-server does not).
#[tokio::test(flavor = "multi_thread")]
async fn gcs_resumable_upload_resumes_from_the_committed_offset() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_GCS_RESUMABLE_ENDPOINT");
    let bucket = gcs_bucket(&endpoint);
    let proxy = cutting_proxy(&endpoint, 7 * MIB, b"bytes */").await;
    let (token_uri, _) = token_server().await;
    let d = gcs_dest(&proxy.url, &bucket, &token_uri).await;
    let data = pattern(13 * MIB + 77, 8);
    let w = d
        .put("r/big.bin", body(data.clone(), None), "video/mp4", None)
        .await
        .unwrap();
    assert_eq!(w.bytes, data.len() as u64);
    assert!(
        proxy.cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy never cut"
    );
    assert!(
        proxy.seen_needle.load(std::sync::atomic::Ordering::SeqCst),
        "no resumable status query was sent"
    );
    assert_eq!(read_back(d.as_ref(), "r/big.bin").await.unwrap(), data);
}

/// A body that yields `data` in 256 KiB chunks, pausing between them, counting what it
/// handed out.
fn slow_body(data: Vec<u8>, sent: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> ByteStream {
    let data = Bytes::from(data);
    Box::pin(futures::stream::unfold(0usize, move |off| {
        let (data, sent) = (data.clone(), sent.clone());
        async move {
            if off >= data.len() {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            let end = (off + 256 * 1024).min(data.len());
            sent.store(end, std::sync::atomic::Ordering::SeqCst);
            Some((Ok(data.slice(off..end)), end))
        }
    }))
}

struct Emulator {
    child: std::process::Child,
}

impl Emulator {
    /// Starts `program args` and waits until `port` accepts connections.
    async fn start(program: &str, args: &[String], port: u16) -> Self {
        // Owned by the guard at once, so it is stopped and reaped on every path.
        let mut emulator = Self {
            child: std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {program}: {e}")),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return emulator;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        emulator.kill();
        panic!("{program} did not listen on {port}");
    }

    /// Stops it as an operator would (SIGTERM, so Azurite saves its metadata; its
    /// in-flight requests are cut all the same), SIGKILL after 10 s.
    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops the emulator once `sent` passes `at` bytes (mid-file).
fn kill_when(
    emulator: std::sync::Arc<std::sync::Mutex<Emulator>>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    at: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while sent.load(std::sync::atomic::Ordering::SeqCst) < at {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        emulator.lock().unwrap().kill();
    })
}

/// Writes 30 MiB to `cut/video.mp4` and stops the emulator mid-file: the put fails as
/// transient, no object (`what`) exists at the key once the emulator is back on the same
/// data, and writing again completes.
async fn stopped_mid_file(
    d: &dyn Destination,
    emulator: std::sync::Arc<std::sync::Mutex<Emulator>>,
    bin: &str,
    args: &[String],
    port: u16,
    seed: u8,
    what: &str,
) {
    let data = pattern(30 * MIB, seed);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = kill_when(emulator.clone(), sent.clone(), 14 * MIB);
    let err = d
        .put(
            "cut/video.mp4",
            slow_body(data.clone(), sent),
            "video/mp4",
            None,
        )
        .await
        .unwrap_err();
    killer.await.unwrap();
    assert!(matches!(err, DestinationError::Transient { .. }), "{err}");
    *emulator.lock().unwrap() = Emulator::start(bin, args, port).await;
    let after = read_back(d, "cut/video.mp4").await;
    assert!(
        matches!(after, Err(DestinationError::NotFound(_))),
        "{what} exists after the interrupted upload: {:?}",
        after.map(|b| b.len())
    );
    d.put("cut/video.mp4", body(data.clone(), None), "video/mp4", None)
        .await
        .unwrap();
    assert_eq!(read_back(d, "cut/video.mp4").await.unwrap(), data);
}

/// Azurite is stopped in the middle of a staged-block upload: the put fails, no blob
/// exists at the key after a restart on the same data, and writing again completes.
#[tokio::test(flavor = "multi_thread")]
async fn azure_stopped_mid_file_leaves_no_blob_and_a_retry_completes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        &port.to_string(),
        "--location",
        dir.path().to_str().unwrap(),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bin = env_or_fail("PORTSHIFT_TEST_AZURITE_BIN");
    let emulator = std::sync::Arc::new(std::sync::Mutex::new(
        Emulator::start(&bin, &args, port).await,
    ));
    let endpoint = format!(
        "http://127.0.0.1:{port}/{}",
        env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT")
    );
    let (container, sas) = azure_container(&endpoint, "rcw");
    let d = azure_dest(&endpoint, &container, &sas).await;
    stopped_mid_file(d.as_ref(), emulator, &bin, &args, port, 4, "a blob").await;
}

/// fake-gcs-server is stopped in the middle of a resumable upload: the put fails after
/// its resume attempts, no object exists after a restart on the same data, and writing
/// again completes.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_stopped_mid_file_leaves_no_object_and_a_retry_completes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        &port.to_string(),
        "-backend",
        "filesystem",
        "-filesystem-root",
        dir.path().to_str().unwrap(),
        "-external-url",
        &format!("http://127.0.0.1:{port}"),
        "-public-host",
        &format!("127.0.0.1:{port}"),
        "-log-level",
        "error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bin = env_or_fail("PORTSHIFT_TEST_GCS_BIN");
    let emulator = std::sync::Arc::new(std::sync::Mutex::new(
        Emulator::start(&bin, &args, port).await,
    ));
    let endpoint = format!("http://127.0.0.1:{port}");
    let bucket = gcs_bucket(&endpoint);
    let (token_uri, _) = token_server().await;
    let d = gcs_dest(&endpoint, &bucket, &token_uri).await;
    stopped_mid_file(d.as_ref(), emulator, &bin, &args, port, 6, "an object").await;
}

/// The S3 destination `prefix` in `bucket` at `endpoint` (the test server, or a proxy in
/// front of it), with `options` appended to its URL.
async fn s3_dest_at(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    options: &str,
) -> Box<dyn Destination> {
    let url: DestinationUrl =
        format!("s3://{bucket}/{prefix}?region=us-east-1&endpoint={endpoint}{options}")
            .parse()
            .unwrap();
    destination::open(&url, Some(&s3_credentials()), &tuning())
        .await
        .unwrap()
}

/// An S3 client with the test server's admin keys (to look at what portshift may not:
/// listings, heads, multipart uploads), and a fresh bucket.
async fn s3_admin_with_bucket() -> (aws_sdk_s3::Client, String) {
    let client = s3_client().await;
    let bucket = fresh_bucket(&client).await;
    (client, bucket)
}

/// Starts a multipart upload with one part, as a worker killed mid-file leaves it, and
/// notes it in the job's journal as that worker did.
async fn killed_workers_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    store: &pipeline::store::JobStore,
    job: &pipeline::JobId,
) -> String {
    let id = unjournaled_upload(client, bucket, key).await;
    store.record_open_upload(job, key, &id).await.unwrap();
    id
}

/// Starts a multipart upload with one part and notes nothing.
async fn unjournaled_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap().to_string();
    client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .part_number(1)
        .body(pattern(5 * MIB, 9).into())
        .send()
        .await
        .unwrap();
    id
}

/// The ids of the multipart uploads still open in `bucket`.
async fn open_upload_ids(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    test_support::s3::open_uploads(client, bucket)
        .await
        .iter()
        .filter_map(|u| u.upload_id().map(str::to_string))
        .collect()
}

/// An S3 destination under `enc/` in a fresh bucket, with a job store as its journal.
struct JournaledS3 {
    client: aws_sdk_s3::Client,
    bucket: String,
    _dir: tempfile::TempDir,
    store: pipeline::store::JobStore,
    job: pipeline::JobId,
    d: Box<dyn Destination>,
}

impl JournaledS3 {
    async fn new() -> Self {
        let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
        let (client, bucket) = s3_admin_with_bucket().await;
        let dir = tempfile::tempdir().unwrap();
        let store = pipeline::store::JobStore::open_sqlite_in(dir.path())
            .await
            .unwrap();
        let job = pipeline::JobId::new();
        let mut d = s3_dest_at(&endpoint, &bucket, "enc", "").await;
        d.set_upload_journal(std::sync::Arc::new(
            stages::upload_journal::StoreJournal::new(store.clone(), job.clone()),
        ));
        Self {
            client,
            bucket,
            _dir: dir,
            store,
            job,
            d,
        }
    }
}

/// A worker killed mid-upload leaves an open multipart upload (invisible, but billed).
/// With the job store as journal, the next upload of that key aborts it first, and the
/// end of the job aborts one whose key is never written again; nothing needs
/// s3:ListBucketMultipartUploads, and the journal ends empty.
#[tokio::test(flavor = "multi_thread")]
async fn s3_uploads_left_open_by_a_killed_worker_are_aborted() {
    let JournaledS3 {
        client,
        bucket,
        _dir,
        store,
        job,
        d,
    } = JournaledS3::new().await;

    let rewritten = killed_workers_upload(&client, &bucket, "enc/a/video.mp4", &store, &job).await;
    let abandoned = killed_workers_upload(&client, &bucket, "enc/b/video.mp4", &store, &job).await;
    let open = open_upload_ids(&client, &bucket).await;
    assert!(
        open.contains(&rewritten) && open.contains(&abandoned),
        "{open:?}"
    );

    // The retried fetch of a/ writes the key again (multipart: 12 MiB in 5 MiB parts).
    let data = pattern(12 * MIB + 5, 4);
    d.put("a/video.mp4", body(data.clone(), None), "video/mp4", None)
        .await
        .unwrap();
    assert_eq!(read_back(d.as_ref(), "a/video.mp4").await.unwrap(), data);
    assert_eq!(
        open_upload_ids(&client, &bucket).await,
        vec![abandoned.clone()]
    );
    assert_eq!(
        store.open_uploads(&job, None).await.unwrap(),
        vec![("enc/b/video.mp4".to_string(), abandoned)]
    );

    // The end of the job aborts the one nobody came back for.
    assert_eq!(d.abort_left_open().await.unwrap(), 1);
    assert!(open_upload_ids(&client, &bucket).await.is_empty());
    assert!(store.open_uploads(&job, None).await.unwrap().is_empty());
    assert_eq!(d.abort_left_open().await.unwrap(), 0);
}

/// A worker killed after S3 created its upload but before the journal noted the id
/// leaves only its intent (the key, noted first). The key's own uploads are found by
/// listing and aborted, at the next attempt at the key and at the end of the job;
/// uploads at other keys (a longer key with the same beginning, another prefix) are
/// not the job's and stay open.
#[tokio::test(flavor = "multi_thread")]
async fn s3_an_upload_killed_before_its_id_was_noted_is_found_by_its_key() {
    let JournaledS3 {
        client,
        bucket,
        _dir,
        store,
        job,
        d,
    } = JournaledS3::new().await;
    let intent = |n: &str| format!("{}{n}", stages::destination::s3::INTENT_PREFIX);

    // Retried at the key: the put aborts the leftover first.
    let rewritten = unjournaled_upload(&client, &bucket, "enc/a/video.mp4").await;
    store
        .record_open_upload(&job, "enc/a/video.mp4", &intent("1"))
        .await
        .unwrap();
    // Never retried: the end of the job finds it.
    let abandoned = unjournaled_upload(&client, &bucket, "enc/b/video.mp4").await;
    store
        .record_open_upload(&job, "enc/b/video.mp4", &intent("2"))
        .await
        .unwrap();
    let longer = unjournaled_upload(&client, &bucket, "enc/b/video.mp4.part").await;
    let elsewhere = unjournaled_upload(&client, &bucket, "other/b/video.mp4").await;

    let data = pattern(12 * MIB + 5, 4);
    d.put("a/video.mp4", body(data.clone(), None), "video/mp4", None)
        .await
        .unwrap();
    assert_eq!(read_back(d.as_ref(), "a/video.mp4").await.unwrap(), data);
    let open = open_upload_ids(&client, &bucket).await;
    assert!(!open.contains(&rewritten), "{open:?}");
    assert!(open.contains(&abandoned), "{open:?}");
    assert_eq!(
        store.open_uploads(&job, None).await.unwrap(),
        vec![("enc/b/video.mp4".to_string(), intent("2"))],
        "the put's own intent and id are gone once it completed"
    );

    assert_eq!(d.abort_left_open().await.unwrap(), 1);
    let mut open = open_upload_ids(&client, &bucket).await;
    open.sort();
    let mut others = vec![longer, elsewhere];
    others.sort();
    assert_eq!(open, others, "only the job's key was aborted");
    assert!(store.open_uploads(&job, None).await.unwrap().is_empty());
}

/// `sse=AES256` asks S3 for SSE-S3 on single puts and multipart uploads alike, and
/// the server reports the objects as encrypted.
#[tokio::test(flavor = "multi_thread")]
async fn s3_sse_s3_encrypts_every_object() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    let (client, bucket) = s3_admin_with_bucket().await;
    let d = s3_dest_at(&endpoint, &bucket, "enc", "&sse=AES256").await;
    for (path, len) in [("small.bin", 1000), ("large.bin", 11 * MIB)] {
        d.put(
            path,
            body(pattern(len, 1), None),
            "application/octet-stream",
            None,
        )
        .await
        .unwrap();
        let head = client
            .head_object()
            .bucket(&bucket)
            .key(format!("enc/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256),
            "{path}"
        );
    }
}

/// `sse=aws:kms&kms_key_id=..` sends the SSE-KMS headers with the customer's key id
/// (checked on the wire: the test server has no KMS).
#[tokio::test(flavor = "multi_thread")]
async fn s3_sse_kms_sends_the_key_id() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT");
    for (len, what) in [(1000, "PutObject"), (11 * MIB, "CreateMultipartUpload")] {
        let proxy = cutting_proxy(
            &endpoint,
            usize::MAX,
            b"x-amz-server-side-encryption-aws-kms-key-id: alias/portshift-exports",
        )
        .await;
        let d = s3_dest_at(
            &proxy.url,
            "any-bucket",
            "enc",
            "&sse=aws:kms&kms_key_id=alias/portshift-exports",
        )
        .await;
        let _ = put_pattern(d.as_ref(), len).await;
        assert!(
            proxy.seen_needle.load(std::sync::atomic::Ordering::SeqCst),
            "{what} did not carry the KMS key id"
        );
    }
}

/// `encryption_scope=` goes with Azure writes (a single put, and a staged upload) and
/// `kms_key=` with GCS uploads (single and resumable); checked on the wire, because
/// neither emulator implements customer-managed keys.
#[tokio::test(flavor = "multi_thread")]
async fn customer_managed_keys_are_sent_with_every_write() {
    let endpoint = env_or_fail("PORTSHIFT_TEST_AZURE_ENDPOINT");
    let account = env_or_fail("PORTSHIFT_TEST_AZURE_ACCOUNT");
    let (container, sas) = azure_container(&endpoint, "cw");
    let host = endpoint.rsplit_once('/').unwrap().0.to_string();
    for len in [1000, 11 * MIB] {
        let proxy = cutting_proxy(&host, usize::MAX, b"x-ms-encryption-scope: cmk-scope-1").await;
        let url = format!(
            "azure://{account}/{container}/cmk?endpoint={}/{account}&encryption_scope=cmk-scope-1",
            proxy.url
        );
        let result = put_pattern(open_azure(&url, &sas).await.as_ref(), len).await;
        assert!(
            proxy.seen_needle.load(std::sync::atomic::Ordering::SeqCst),
            "{len} bytes: no x-ms-encryption-scope ({result:?})"
        );
    }
    let gcs_endpoint = env_or_fail("PORTSHIFT_TEST_GCS_ENDPOINT");
    let bucket = gcs_bucket(&gcs_endpoint);
    let (token_uri, _) = token_server().await;
    for len in [1000, 11 * MIB] {
        let proxy = cutting_proxy(
            &gcs_endpoint,
            usize::MAX,
            b"kmsKeyName=projects%2Fp1%2Flocations%2Feu%2FkeyRings%2Fr1%2FcryptoKeys%2Fk1",
        )
        .await;
        let url = format!(
            "gs://{bucket}/cmk?endpoint={}&kms_key=projects/p1/locations/eu/keyRings/r1/cryptoKeys/k1",
            proxy.url
        );
        let result = put_pattern(open_gcs(&url, &token_uri).await.as_ref(), len).await;
        assert!(
            proxy.seen_needle.load(std::sync::atomic::Ordering::SeqCst),
            "{len} bytes: no kmsKeyName ({result:?})"
        );
    }
}
