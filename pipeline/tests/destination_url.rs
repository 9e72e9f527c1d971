//! Round-trip properties of the destination URL model: whatever destination a job or a
//! schedule holds, storing its rendering and parsing it back gives the same destination
//! (all four schemes, every option, the BigQuery sink, and buckets, prefixes and local
//! paths full of characters URLs treat specially). Also: any text that parses at all
//! round-trips, and no text makes the parser panic.

use std::path::PathBuf;

use pipeline::destination_url::{
    AzureUrl, BigQueryUrl, DestinationUrl, GCS_DEFAULT_ENDPOINT, GcsUrl, S3Encryption, S3Url,
    Storage, azure_default_endpoint,
};
use proptest::prelude::*;

/// Characters URLs give a meaning to, plus non-ASCII, mixed into names and paths.
const SPECIAL: &str = "[a-zA-Z0-9 #?%&=+:;@!$'()*,~|\\[\\]{}<>\"^`ü日é-]";

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("{SPECIAL}{{1,12}}")).unwrap(),
        "[a-z0-9_-]{1,10}",
        // Spellings the URL parser would take for `.`/`..` if left unencoded.
        Just("%2e%2e".to_string()),
        Just("...".to_string()),
    ]
    .prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn prefix() -> impl Strategy<Value = String> {
    proptest::collection::vec(segment(), 0..4).prop_map(|v| v.join("/"))
}

fn endpoint() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        prop_oneof![
            Just("127.0.0.1".to_string()),
            Just("[::1]".to_string()),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,6}){0,2}",
        ],
        proptest::option::of(1u16..=65535),
        proptest::collection::vec("[a-zA-Z0-9_.~-]{1,8}|%2[0-9A-F]", 0..3),
    )
        .prop_filter_map("a valid endpoint", |(scheme, host, port, path)| {
            // `xn--` starts a punycode (IDNA) label, which the URL parser rightly refuses
            // unless it decodes: not a host this strategy means to make.
            if host.split('.').any(|label| label.starts_with("xn--")) {
                return None;
            }
            let mut s = format!("{scheme}://{host}");
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            for seg in path {
                if seg == "." || seg == ".." {
                    return None;
                }
                s.push('/');
                s.push_str(&seg);
            }
            Some(s)
        })
}

/// Option values that are free text (region, KMS key ids): anything but whitespace
/// and control characters, including `&`, `=`, `+`, `#` and `%`.
fn free_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{2}-[a-z]{4,9}-[1-3]",
        "[a-zA-Z0-9:/&=+#%?_.ü-]{1,30}",
        "arn:aws:kms:[a-z0-9-]{3,12}:[0-9]{12}:key/[a-f0-9-]{8,36}",
    ]
}

fn s3() -> impl Strategy<Value = Storage> {
    (
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,40}",
        prefix(),
        proptest::option::of(free_value()),
        proptest::option::of(endpoint()),
        prop_oneof![
            Just(None),
            Just(Some(S3Encryption::Aes256)),
            proptest::option::of(free_value())
                .prop_map(|key_id| Some(S3Encryption::Kms { key_id })),
        ],
    )
        .prop_map(|(bucket, prefix, region, endpoint, sse)| {
            Storage::S3(S3Url {
                bucket,
                prefix,
                region,
                endpoint,
                sse,
            })
        })
}

fn azure() -> impl Strategy<Value = Storage> {
    (
        "[a-z0-9]{3,24}",
        "[a-z0-9](-?[a-z0-9]){2,30}",
        prefix(),
        proptest::option::of(endpoint()),
        proptest::option::of("[A-Za-z0-9-]{1,20}"),
    )
        .prop_map(|(account, container, prefix, endpoint, encryption_scope)| {
            Storage::Azure(AzureUrl {
                endpoint: endpoint.unwrap_or_else(|| azure_default_endpoint(&account)),
                account,
                container,
                prefix,
                encryption_scope,
            })
        })
}

fn gcs() -> impl Strategy<Value = Storage> {
    (
        "[a-z0-9][a-z0-9_.-]{1,40}[a-z0-9]",
        prefix(),
        proptest::option::of(endpoint()),
        proptest::option::of(
            "projects/[a-z0-9-]{1,12}/locations/[a-z0-9-]{1,12}/keyRings/[A-Za-z0-9_-]{1,12}/cryptoKeys/[A-Za-z0-9_-]{1,12}",
        ),
    )
        .prop_map(|(bucket, prefix, endpoint, kms_key)| {
            Storage::Gcs(GcsUrl {
                bucket,
                prefix,
                endpoint: endpoint.unwrap_or_else(|| GCS_DEFAULT_ENDPOINT.to_string()),
                kms_key,
            })
        })
}

fn local() -> impl Strategy<Value = Storage> {
    let component = prop_oneof![
        segment().prop_map(std::ffi::OsString::from),
        // Any bytes but '/' and NUL: file names on Unix need not be UTF-8.
        proptest::collection::vec(1u8..=255, 1..10).prop_filter_map("a file name", |b| {
            use std::os::unix::ffi::OsStringExt;
            (!b.contains(&b'/') && b != b"." && b != b"..").then(|| std::ffi::OsString::from_vec(b))
        }),
    ];
    proptest::collection::vec(component, 0..5).prop_map(|parts| {
        let mut root = PathBuf::from("/");
        root.extend(parts);
        Storage::Local { root }
    })
}

fn bigquery() -> impl Strategy<Value = Option<BigQueryUrl>> {
    proptest::option::of(
        (
            "[a-zA-Z0-9_-]{1,30}",
            "[a-zA-Z0-9_]{1,30}",
            "[a-zA-Z0-9_]{1,30}",
            proptest::option::of(endpoint()),
        )
            .prop_map(|(project, dataset, table, endpoint)| BigQueryUrl {
                project,
                dataset,
                table,
                endpoint,
            }),
    )
}

fn destination() -> impl Strategy<Value = DestinationUrl> {
    (prop_oneof![s3(), azure(), gcs(), local()], bigquery())
        .prop_map(|(storage, bigquery)| DestinationUrl { storage, bigquery })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// parse(render(x)) == x, and the rendering is canonical (renders again the same).
    #[test]
    fn rendering_parses_back_to_the_same_destination(d in destination()) {
        let shown = d.to_string();
        let back: DestinationUrl = match shown.parse() {
            Ok(b) => b,
            Err(e) => return Err(TestCaseError::fail(format!("{d:?} rendered as {shown:?}: {e}"))),
        };
        prop_assert_eq!(&back, &d, "rendered as {}", shown);
        prop_assert_eq!(back.to_string(), shown);
    }

    /// Whatever text parses, its rendering parses back to the same destination; no
    /// text makes the parser panic.
    #[test]
    fn any_text_that_parses_round_trips(
        given in prop_oneof![
            any::<String>(),
            "(s3|gs|azure|file)://[a-z0-9/.%#?&=:_-]{0,40}",
            "(s3|gs|azure|file)://[a-z0-9]{3,8}/[a-z0-9/%]{0,20}\\?(region|endpoint|sse|kms_key_id|kms_key|encryption_scope|bigquery|bigquery_endpoint)=[a-zA-Z0-9.:/%+&=_-]{0,30}",
        ]
    ) {
        if let Ok(d) = given.parse::<DestinationUrl>() {
            let shown = d.to_string();
            let back: DestinationUrl = shown.parse().map_err(|e| {
                TestCaseError::fail(format!("{given:?} -> {shown:?}: {e}"))
            })?;
            prop_assert_eq!(back, d, "{:?} rendered as {}", given, shown);
        }
    }
}
