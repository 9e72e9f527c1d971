//! Small HTTP servers a test runs on loopback: any axum app on a free port, and a
//! webhook receiver that records what it was sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Serves `app` on a free loopback port until the test ends; returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What a webhook receiver saw: headers and body of each request.
pub type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A webhook receiver that records the headers and body of each request and answers
/// 200; returns its URL.
pub async fn webhook() -> (String, Received) {
    let seen: Received = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push((headers, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    (format!("http://{}/hook", serve(app).await), seen)
}
