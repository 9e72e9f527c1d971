//! The project's local S3 server (SeaweedFS, found through the `PORTSHIFT_TEST_S3_*`
//! variables): a client for it, fresh buckets, destination URLs, and reading back what
//! portshift wrote.

use crate::env_or_fail;

/// An S3 client for the test server, used to check what portshift wrote.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
        None,
        None,
        "test",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A new empty bucket; returns its name.
pub async fn fresh_bucket(client: &aws_sdk_s3::Client) -> String {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    client.create_bucket().bucket(&name).send().await.unwrap();
    name
}

/// The destination URL of `prefix` in `bucket` on the test server.
pub fn s3_dest(bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?region=us-east-1&endpoint={}",
        env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT")
    )
}

/// The S3 credentials document of the test server's key pair.
pub fn s3_credentials() -> pipeline::secrets::S3Credentials {
    serde_json::from_value(serde_json::json!({
        "access_key_id": env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
        "secret_access_key": env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
    }))
    .unwrap()
}

/// The multipart uploads still open in `bucket` (invisible, but billed).
pub async fn open_uploads(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> Vec<aws_sdk_s3::types::MultipartUpload> {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads
        .unwrap_or_default()
}

/// Fails if any multipart upload is still open in `bucket` (invisible, but billed).
pub async fn assert_no_open_uploads(client: &aws_sdk_s3::Client, bucket: &str) {
    let uploads = open_uploads(client, bucket).await;
    assert!(
        uploads.is_empty(),
        "multipart uploads left open: {uploads:?}"
    );
}

/// Every key under `prefix` (with the prefix stripped), sorted.
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{prefix}/"))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            keys.push(
                o.key()
                    .unwrap()
                    .strip_prefix(&format!("{prefix}/"))
                    .unwrap()
                    .to_string(),
            );
        }
    }
    keys.sort();
    keys
}

/// The bytes of one object.
pub async fn get_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}
