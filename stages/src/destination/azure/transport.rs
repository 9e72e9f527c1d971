//! The HTTP transport and request policies the Azure SDK pipeline runs on: our own
//! reqwest client (rustls, certificate validation always on, the optional extra CA
//! bundle from `PORTSHIFT_CA_FILE`), so the SDK never builds a client of its own, and a
//! policy that puts `Content-MD5` on every upload so the service rejects bytes
//! corrupted on the way (Put Blob, Put Block and Put Block List all verify it).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{AsyncRawResponse, Body, Context, HttpClient, Method, Request};
use base64::Engine;
use futures::TryStreamExt;
use md5::{Digest, Md5};

/// Our reqwest client as the SDK's [`HttpClient`]. Responses are handed back as
/// streams, so downloads are not buffered.
#[derive(Debug, Clone)]
pub(crate) struct RustlsTransport(pub(crate) reqwest::Client);

#[async_trait]
impl HttpClient for RustlsTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let method = match request.method() {
            Method::Delete => reqwest::Method::DELETE,
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Patch => reqwest::Method::PATCH,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            other => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    format!("HTTP method {other:?} is not supported by portshift's transport"),
                ));
            }
        };
        let mut out = self.0.request(method, request.url().clone());
        for (name, value) in request.headers().iter() {
            out = out.header(name.as_str(), value.as_str());
        }
        out = match request.body() {
            Body::Bytes(bytes) => out.body(bytes.clone()),
            Body::SeekableStream(stream) => out.body(reqwest::Body::wrap_stream(stream.clone())),
        };
        let rsp = out.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            // Without the URL: it carries the SAS token.
            let e = e.without_url();
            let text = crate::http::error_chain(&e);
            Error::with_message(kind, text)
        })?;
        let status = rsp.status().as_u16();
        let headers: HashMap<HeaderName, HeaderValue> = rsp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str().ok().map(|v| {
                    (
                        HeaderName::from(k.as_str().to_owned()),
                        HeaderValue::from(v.to_owned()),
                    )
                })
            })
            .collect();
        let body = Box::pin(
            rsp.bytes_stream()
                .map_err(|e| Error::with_message(ErrorKind::Io, e.without_url().to_string())),
        );
        Ok(AsyncRawResponse::new(
            status.into(),
            Headers::from(headers),
            body,
        ))
    }
}

/// Adds `Content-MD5` (the MD5 of the request body) to every PUT that carries bytes
/// and does not have one yet.
#[derive(Debug)]
pub(crate) struct ContentMd5Policy;

#[async_trait]
impl Policy for ContentMd5Policy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if request.method() == Method::Put
            && request.headers().get_optional_str(&CONTENT_MD5).is_none()
            && let Body::Bytes(bytes) = request.body()
            && !bytes.is_empty()
        {
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes));
            request.insert_header(CONTENT_MD5, md5);
        }
        match next.split_first() {
            Some((first, rest)) => first.send(ctx, request, rest).await,
            None => Err(Error::with_message(
                ErrorKind::Other,
                "the Azure request pipeline has no transport policy",
            )),
        }
    }
}

const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");
