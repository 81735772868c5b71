//! The receiver's listener faces the internet, so it bounds what a client
//! can hold: at most [`MAX_CONNECTIONS`] connections at once (the next ones
//! wait in the kernel's backlog), and each lives at most
//! [`CONNECTION_LIFETIME`] (Bitbucket sends a delivery in one short
//! request and gives up after 10 s itself). Idle or trickling connections
//! therefore cannot pile up and take the file descriptors the store and the
//! crawl need.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection is closed this long after it was accepted.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// A [`TcpListener`] with a bound on connections and their lifetime.
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    lifetime: Duration,
}

impl BoundedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener) -> BoundedListener {
        BoundedListener::with_limits(inner, MAX_CONNECTIONS, CONNECTION_LIFETIME)
    }

    /// Wraps `inner` with other limits (tests).
    pub fn with_limits(inner: TcpListener, max: usize, lifetime: Duration) -> BoundedListener {
        BoundedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
            lifetime,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = BoundedStream {
                        inner: stream,
                        deadline: Box::pin(tokio::time::sleep(self.lifetime)),
                        _permit: permit,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait a
                    // moment rather than spin.
                    tracing::debug!(error = %e, "webhook listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot until it is dropped, and failing every
/// read and write once its lifetime is over.
pub struct BoundedStream {
    inner: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl BoundedStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "webhook connection lifetime over")
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_bounded_in_number_and_lifetime() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = BoundedListener::with_limits(tcp, 2, Duration::from_millis(300));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (mut first, _) = listener.accept().await;
        let (second, _) = listener.accept().await;
        // A third waits until a slot frees.
        let third = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(third.is_err(), "a third connection was accepted");
        drop(second);
        let third = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
        assert!(third.is_ok(), "the freed slot was not reused");
        // An idle connection ends at its lifetime.
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(2), first.read(&mut buf)).await;
        assert_eq!(
            read.expect("the read outlived the connection's lifetime")
                .unwrap_err()
                .kind(),
            io::ErrorKind::TimedOut
        );
        assert!(first.write_all(b"x").await.is_err());
    }
}
