//! A deliberately tiny HTTP/1.1 responder for `/metrics` and `/health`: operators scrape these
//! over a trusted network, and a full HTTP stack would be the biggest dependency of the binary.
//! Requests are read up to 8 KiB and 5 s; anything else gets 404 and the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Produces the body for a path, or `None` for 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, handler: Handler, shutdown: CancellationToken) {
    loop {
        let (mut socket, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = socket.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("GET "))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("");
            let response = match handler(path) {
                Some((content_type, body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Binds `addr` and serves in the background.
pub async fn spawn(
    addr: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, handler, shutdown));
    Ok(bound)
}

/// A blocking `GET path` on `addr`, for tools and tests: the whole response, headers included.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: shake\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The sum of every sample in Prometheus text whose line starts with `prefix` (a metric name,
/// optionally with the opening of its labels); 0 when there is none.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_known_paths_and_404s_the_rest() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let shutdown = CancellationToken::new();
        let handler: Handler = Arc::new(|path| {
            (path == "/metrics")
                .then(|| ("text/plain", "a_total{x=\"1\"} 2\na_total{x=\"2\"} 3\nb 9\n".to_owned()))
        });
        let addr = runtime
            .block_on(spawn("127.0.0.1:0".parse().unwrap(), handler, shutdown.clone()))
            .unwrap();
        let _guard = runtime.enter();
        let thread = std::thread::spawn(move || {
            (get(addr, "/metrics").unwrap(), get(addr, "/nope").unwrap())
        });
        let (ok, missing) = loop {
            runtime.block_on(tokio::time::sleep(Duration::from_millis(10)));
            if thread.is_finished() {
                break thread.join().unwrap();
            }
        };
        assert!(ok.starts_with("HTTP/1.1 200"));
        assert_eq!(metric_sum(&ok, "a_total"), 5.0);
        assert_eq!(metric_sum(&ok, "a_total{x=\"2\""), 3.0);
        assert_eq!(metric_sum(&ok, "c"), 0.0);
        assert!(missing.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
    }
}
