//! Safety on the wire against a hand-written hostile server: redirects to
//! another origin, oversized bodies, `next` links that would never end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bbcrawl::bitbucket::{ApiError, BitbucketClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::*;

/// Serves `response` to every connection; counts connections.
async fn raw_server(response: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

fn client_for(origin: &str) -> BitbucketClient {
    let mut o = bbcrawl::bitbucket::ClientOptions::new(
        url::Url::parse(&format!("{origin}/2.0")).unwrap(),
        vec![access_token()],
    );
    o.max_retries = 0;
    BitbucketClient::new(o).unwrap()
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() {
    let (elsewhere, elsewhere_hits) =
        raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()).await;
    let redirect = format!("HTTP/1.1 302 Found\r\nlocation: {elsewhere}/2.0/repositories/acme\r\ncontent-length: 0\r\n\r\n");
    let (api, _) = raw_server(redirect.into_bytes()).await;
    let err = client_for(&api)
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::ForeignOrigin { .. }), "{err:?}");
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the credential went to another origin"
    );
}

/// A 200 JSON response with `body`.
fn json_200(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn an_empty_next_ends_and_a_next_to_the_same_page_is_refused() {
    let (api, hits) = raw_server(json_200(r#"{"values":[],"next":""}"#)).await;
    let all = client_for(&api)
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(all.is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // "?" resolves to the listing without a query, which answers "?" again:
    // the second page names itself, and paging stops there with an error
    // instead of requesting it forever.
    let (api, hits) = raw_server(json_200(r#"{"values":[],"next":"?"}"#)).await;
    let err = client_for(&api)
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidUrl(_)), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_over_32_mib_is_refused() {
    let big = 33 * 1024 * 1024;
    let (api, _) = raw_server(
        format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n{{\"values\":[").into_bytes(),
    )
    .await;
    let err = client_for(&api)
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::BodyTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_streamed_body_over_32_mib_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            // No content-length: chunked, and far too long.
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = vec![b' '; 1024 * 1024];
            for _ in 0..40 {
                let head = format!("{:x}\r\n", chunk.len());
                if sock.write_all(head.as_bytes()).await.is_err()
                    || sock.write_all(&chunk).await.is_err()
                    || sock.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
        }
    });
    let err = client_for(&format!("http://{addr}"))
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::BodyTooLarge { .. }), "{err:?}");
}
