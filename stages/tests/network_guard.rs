//! The network guard of console (tenant) jobs, client by client: the Chorus API client,
//! media redirect hops, webhooks and destinations (Azure, GCS, BigQuery's token, S3).
//!
//! Host names are turned into addresses by an injected resolver (there is no DNS server
//! to control here), so a name can "resolve" to 127.0.0.1, ::ffff:127.0.0.1 or
//! 169.254.169.254, or change its answer between a check and the connection
//! (rebinding). Everything after that step is real: the guard's filter, reqwest's
//! connector and a canary TCP listener on 127.0.0.1 that counts every connection it
//! gets. A refused job must leave the canary at zero; each case's positive control
//! (the operator's open egress, or the origin on the allow-list) reaches it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use pipeline::Trust;
use pipeline::tenancy::Allowances;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::SecretString;
use stages::chorus::{ChorusClient, ChorusConfig, ChorusError, EngagementFilter};
use stages::destination::{self, DestinationCredentials, DestinationError, DestinationUrl, Tuning};
use stages::http::{Egress, webhook_client};

/// A listener that only counts connections (and closes them): anything reaching it
/// would have reached the internal service it stands for.
struct Canary {
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn start_canary() -> Canary {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    Canary { port, hits }
}

impl Canary {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Answers each name with fixed addresses; a name listed in `rebind` answers with a
/// public address the first time and with its listed addresses afterwards.
#[derive(Default)]
struct FakeDns {
    answers: HashMap<String, Vec<IpAddr>>,
    rebind: HashMap<String, AtomicUsize>,
}

impl Resolve for FakeDns {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let first = self
            .rebind
            .get(&host)
            .map(|n| n.fetch_add(1, Ordering::SeqCst) == 0)
            .unwrap_or(false);
        let answer: Vec<IpAddr> = if first {
            vec!["93.184.216.34".parse().unwrap()]
        } else {
            self.answers.get(&host).cloned().unwrap_or_default()
        };
        Box::pin(async move {
            if answer.is_empty() {
                return Err(format!("no such host {host}").into());
            }
            let addrs: Vec<SocketAddr> = answer
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The addresses a hostile name is made to resolve to, one case each.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Loopback,
    MappedLoopback,
    Metadata,
    /// Public at the check, loopback at the connection.
    Rebinding,
}

const ANSWERS: [Answer; 4] = [
    Answer::Loopback,
    Answer::MappedLoopback,
    Answer::Metadata,
    Answer::Rebinding,
];

const HOST: &str = "internal.tenant.example";

fn dns(answer: Answer) -> Arc<FakeDns> {
    let ip: IpAddr = match answer {
        Answer::Loopback | Answer::Rebinding => "127.0.0.1".parse().unwrap(),
        Answer::MappedLoopback => "::ffff:127.0.0.1".parse().unwrap(),
        Answer::Metadata => "169.254.169.254".parse().unwrap(),
    };
    let mut fake = FakeDns::default();
    fake.answers.insert(HOST.into(), vec![ip]);
    fake.answers.insert(
        "allowed.tenant.example".into(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    if matches!(answer, Answer::Rebinding) {
        fake.rebind.insert(HOST.into(), AtomicUsize::new(0));
    }
    Arc::new(fake)
}

fn tenant(allow: &[String]) -> Trust {
    Trust::Tenant(Allowances::new(allow, None).unwrap())
}

/// A tenant job's guard; for the rebinding case the name is checked first (public) so
/// the connection sees the second answer.
async fn guarded(answer: Answer, allow: &[String]) -> Egress {
    let egress = Egress::for_trust(&tenant(allow)).with_resolver(dns(answer));
    if matches!(answer, Answer::Rebinding) {
        let checked = egress.resolve(HOST).await.unwrap();
        assert!(
            checked
                .iter()
                .all(|a| a.ip().to_string() == "93.184.216.34"),
            "{checked:?}"
        );
    }
    egress
}

fn is_guard_refusal(text: &str) -> bool {
    text.contains("public")
}

fn chorus(base: &str, egress: Egress) -> Result<ChorusClient, ChorusError> {
    let mut config = ChorusConfig::new(base.parse().unwrap(), SecretString::from("CANARY-TOKEN"));
    config.egress = egress;
    config.max_attempts = 2;
    config.base_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    config.extra_ca_file = None;
    ChorusClient::new(config)
}

fn filter() -> EngagementFilter {
    EngagementFilter {
        min_date: "2024-01-01T00:00:00Z".parse().unwrap(),
        max_date: "2024-01-02T00:00:00Z".parse().unwrap(),
        engagement_type: None,
    }
}

#[tokio::test]
async fn chorus_api_on_a_name_that_resolves_inside_is_never_contacted() {
    for answer in ANSWERS {
        let canary = start_canary().await;
        let base = format!("https://{HOST}:{}/", canary.port);
        let client = chorus(&base, guarded(answer, &[]).await).unwrap();
        let err = client.list_engagements(&filter(), None).await.unwrap_err();
        assert!(
            matches!(err, ChorusError::Refused { .. }) && is_guard_refusal(&err.to_string()),
            "{answer:?}: {err}"
        );
        assert!(!err.to_string().contains("CANARY"), "{err}");
        assert_eq!(
            canary.hits(),
            0,
            "{answer:?}: the internal address was contacted"
        );
    }
    // IP literals and plain http are refused before any connection.
    let canary = start_canary().await;
    for base in [
        format!("https://127.0.0.1:{}/", canary.port),
        format!("https://[::ffff:127.0.0.1]:{}/", canary.port),
        "https://169.254.169.254/".to_string(),
        "http://chorus.example/".to_string(),
    ] {
        let err = chorus(&base, Egress::for_trust(&tenant(&[]))).unwrap_err();
        assert!(matches!(err, ChorusError::Config { .. }), "{base}: {err}");
    }
    assert_eq!(canary.hits(), 0);

    // Positive controls: the operator's job, and the origin on the allow-list, connect.
    let canary = start_canary().await;
    let base = format!("https://{HOST}:{}/", canary.port);
    let open = Egress::open().with_resolver(dns(Answer::Loopback));
    let _ = chorus(&format!("https://127.0.0.1:{}/", canary.port), open)
        .unwrap()
        .list_engagements(&filter(), None)
        .await;
    assert!(canary.hits() >= 1, "the operator's job did not connect");
    let before = canary.hits();
    let allowed = guarded(
        Answer::Loopback,
        &[format!("https://{HOST}:{}", canary.port)],
    )
    .await;
    let _ = chorus(&base, allowed)
        .unwrap()
        .list_engagements(&filter(), None)
        .await;
    assert!(canary.hits() > before, "the allowed origin was not reached");
}

/// A tenant's own Chorus (on an allowed origin, as the simulator is in the tests)
/// whose media answer redirects to `location`.
async fn redirecting_chorus(location: String) -> String {
    let app = axum::Router::new().route(
        "/api/v1/conversations/{id}/media",
        axum::routing::get(move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, location)]).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn media_redirect_hops_into_the_network_are_refused() {
    for answer in ANSWERS {
        let canary = start_canary().await;
        let api = redirecting_chorus(format!("https://{HOST}:{}/meta-data", canary.port)).await;
        let client = chorus(
            &format!("{api}/"),
            guarded(answer, std::slice::from_ref(&api)).await,
        )
        .unwrap();
        let err = client.media("rec-1").await.unwrap_err();
        assert!(
            matches!(err, ChorusError::Refused { .. }) && is_guard_refusal(&err.to_string()),
            "{answer:?}: {err}"
        );
        assert_eq!(
            canary.hits(),
            0,
            "{answer:?}: the redirect target was contacted"
        );
    }
    for target in [
        "https://127.0.0.1:{port}/x",
        "https://[::ffff:7f00:1]:{port}/x",
        "https://169.254.169.254/latest",
        "http://media.example/x",
    ] {
        let canary = start_canary().await;
        let location = target.replace("{port}", &canary.port.to_string());
        let api = redirecting_chorus(location.clone()).await;
        let client = chorus(
            &format!("{api}/"),
            Egress::for_trust(&tenant(std::slice::from_ref(&api))),
        )
        .unwrap();
        let err = client.media("rec-1").await.unwrap_err();
        assert!(
            matches!(err, ChorusError::Refused { .. }),
            "{location}: {err}"
        );
        assert_eq!(canary.hits(), 0, "{location}");
    }
    // Positive control: the operator's job follows such a redirect (to the literal
    // address: the open egress uses the system resolver, which cannot know the name).
    let canary = start_canary().await;
    let api = redirecting_chorus(format!("https://127.0.0.1:{}/meta-data", canary.port)).await;
    let client = chorus(&format!("{api}/"), Egress::open()).unwrap();
    let _ = client.media("rec-1").await;
    assert!(
        canary.hits() >= 1,
        "the operator's job did not follow the redirect"
    );
}

#[tokio::test]
async fn webhooks_reach_only_public_https_hosts_even_through_redirects() {
    for answer in ANSWERS {
        let canary = start_canary().await;
        let client = webhook_client(None, &guarded(answer, &[]).await).unwrap();
        let err = client
            .post(format!("https://{HOST}:{}/hook", canary.port))
            .body("{}")
            .send()
            .await
            .unwrap_err();
        let refused = stages::http::egress_refusal(&err).map(|r| r.to_string());
        assert!(
            refused.as_deref().is_some_and(is_guard_refusal),
            "{answer:?}: {err:?}"
        );
        assert_eq!(canary.hits(), 0, "{answer:?}");

        // A public-looking receiver (an allowed origin here) that redirects inside.
        let canary = start_canary().await;
        let bouncer = redirecting_hook(format!("https://{HOST}:{}/hook", canary.port)).await;
        let client =
            webhook_client(None, &guarded(answer, std::slice::from_ref(&bouncer)).await).unwrap();
        let sent = client
            .post(format!("{bouncer}/hook"))
            .body("{}")
            .send()
            .await;
        assert!(sent.is_err(), "{answer:?}: the redirect was followed");
        assert_eq!(
            canary.hits(),
            0,
            "{answer:?}: the redirect target was contacted"
        );
    }
    let canary = start_canary().await;
    let bouncer = redirecting_hook(format!("https://127.0.0.1:{}/hook", canary.port)).await;
    let client = webhook_client(
        None,
        &Egress::for_trust(&tenant(std::slice::from_ref(&bouncer))),
    )
    .unwrap();
    let err = client
        .post(format!("{bouncer}/hook"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("public"), "{err:?}");
    assert_eq!(canary.hits(), 0);
    // Positive control: the operator's webhook client follows it.
    let client = webhook_client(None, &Egress::open()).unwrap();
    let _ = client.post(format!("{bouncer}/hook")).send().await;
    assert!(canary.hits() >= 1);
}

async fn redirecting_hook(location: String) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn tuning() -> Tuning {
    Tuning {
        part_size: 5 * 1024 * 1024,
        parts_in_flight: 1,
        ..Tuning::default()
    }
}

/// Opens `url` with `creds` as a tenant's job does: no origin allowed beyond the
/// public ones, so every request goes through the egress guard.
async fn open_as_tenant(
    url: &DestinationUrl,
    creds: DestinationCredentials<'_>,
) -> Result<Box<dyn destination::Destination>, DestinationError> {
    destination::open_guarded(
        url,
        creds,
        &tuning(),
        None,
        &Egress::for_trust(&tenant(&[])),
    )
    .await
}

/// Writes one small object to an Azure destination whose endpoint is `https://{host}`,
/// opened through `egress` (the attack and its positive control do the same write).
async fn put_to_azure(
    host: &str,
    creds: &pipeline::secrets::AzureCredentials,
    egress: &Egress,
) -> Result<destination::Written, DestinationError> {
    let url: DestinationUrl = format!("azure://acct/calls/p?endpoint=https://{host}/acct")
        .parse()
        .unwrap();
    let dest = destination::open_guarded(
        &url,
        DestinationCredentials {
            azure: Some(creds),
            ..Default::default()
        },
        &tuning(),
        None,
        egress,
    )
    .await
    .unwrap();
    dest.put_bytes(
        "x.json",
        bytes::Bytes::from_static(b"{}"),
        "application/json",
    )
    .await
}

#[tokio::test]
async fn destination_endpoints_on_internal_addresses_receive_nothing() {
    let azure_creds: pipeline::secrets::AzureCredentials =
        serde_json::from_value(serde_json::json!({"sas_token": "sv=2024&sp=cw&sig=CANARY"}))
            .unwrap();
    for answer in ANSWERS {
        let canary = start_canary().await;
        let host = format!("{HOST}:{}", canary.port);
        let egress = guarded(answer, &[]).await;
        let err = put_to_azure(&host, &azure_creds, &egress)
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("CANARY"), "{err}");
        assert_eq!(
            canary.hits(),
            0,
            "{answer:?}: the storage endpoint was contacted ({err})"
        );
    }
    // IP-literal endpoints are refused when the destination is opened.
    for (dest, creds) in [
        (
            "azure://acct/calls/p?endpoint=https://127.0.0.1:1/acct",
            DestinationCredentials {
                azure: Some(&azure_creds),
                ..Default::default()
            },
        ),
        (
            "gs://bucket/p?endpoint=https://169.254.169.254",
            DestinationCredentials::default(),
        ),
    ] {
        let url: DestinationUrl = dest.parse().unwrap();
        let err = open_as_tenant(&url, creds)
            .await
            .err()
            .unwrap_or_else(|| panic!("{dest} opened"));
        assert!(err.is_refused(), "{dest}: {err}");
    }
    // No credentials: no fallback to the server's identity (AWS chain, metadata server).
    for dest in [
        "s3://bucket/p?region=us-east-1",
        "gs://bucket/p",
        "azure://acct/calls/p",
    ] {
        let url: DestinationUrl = dest.parse().unwrap();
        let err = open_as_tenant(&url, DestinationCredentials::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{dest} opened without credentials"));
        assert!(err.to_string().contains("own"), "{dest}: {err}");
    }
    // A custom S3 endpoint goes through the AWS SDK's own connector: only allowed origins.
    let s3: pipeline::secrets::S3Credentials = serde_json::from_value(
        serde_json::json!({"access_key_id": "AKIA", "secret_access_key": "CANARY"}),
    )
    .unwrap();
    let url: DestinationUrl = "s3://bucket/p?region=us-east-1&endpoint=https://s3.tenant.example"
        .parse()
        .unwrap();
    let creds = DestinationCredentials {
        s3: Some(&s3),
        ..Default::default()
    };
    let err = open_as_tenant(&url, creds)
        .await
        .err()
        .expect("custom S3 endpoint opened");
    assert!(err.to_string().contains("--allow-origin"), "{err}");
    let allowed = Egress::for_trust(&tenant(&["https://s3.tenant.example".into()]));
    assert!(
        destination::open_guarded(&url, creds, &tuning(), None, &allowed)
            .await
            .is_ok()
    );

    // Positive control: the operator's Azure destination does reach the endpoint.
    let canary = start_canary().await;
    let host = format!("127.0.0.1:{}", canary.port);
    let _ = put_to_azure(&host, &azure_creds, &Egress::open()).await;
    assert!(
        canary.hits() >= 1,
        "the operator's destination did not connect"
    );
}

/// A service-account key whose `token_uri` points inside: the key's JWT assertion is
/// never posted there for a tenant's job.
#[tokio::test]
async fn a_keys_token_uri_inside_the_network_is_refused() {
    let pem = test_support::cloud::rsa_key_pem();
    for answer in ANSWERS {
        let canary = start_canary().await;
        let key = serde_json::json!({
            "type": "service_account", "client_email": "x@p.iam.gserviceaccount.com",
            "private_key": pem, "token_uri": format!("https://{HOST}:{}/token", canary.port),
        })
        .to_string();
        let source = stages::gcp_auth::TokenSource::resolve(
            Some(&SecretString::from(key)),
            stages::gcp_auth::SCOPE_STORAGE,
            None,
            &guarded(answer, &[]).await,
        )
        .unwrap();
        assert!(source.token().await.is_err());
        assert_eq!(
            canary.hits(),
            0,
            "{answer:?}: the token endpoint was contacted"
        );
    }
    let key = serde_json::json!({
        "type": "service_account", "client_email": "x@p.iam.gserviceaccount.com",
        "private_key": pem, "token_uri": "https://169.254.169.254/token",
    })
    .to_string();
    let err = stages::gcp_auth::TokenSource::resolve(
        Some(&SecretString::from(key)),
        stages::gcp_auth::SCOPE_STORAGE,
        None,
        &Egress::for_trust(&tenant(&[])),
    )
    .unwrap_err();
    assert!(err.to_string().contains("public"), "{err}");
    // No key at all: never the metadata server.
    let err = stages::gcp_auth::TokenSource::resolve(
        None,
        stages::gcp_auth::SCOPE_STORAGE,
        None,
        &Egress::for_trust(&tenant(&[])),
    )
    .unwrap_err();
    assert!(err.to_string().contains("own key"), "{err}");
}
