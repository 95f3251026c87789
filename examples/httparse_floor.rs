//! The least a proxy with an HTTP/1 layer of its own does per request: what
//! replacing hyper on the request path could at best buy, measured with
//! `FLOOR=… bench/compare.sh` beside `hyper_floor` (BENCHMARKS.md, "The
//! floor").
//!
//! `httparse_floor LISTEN UPSTREAM` (both `host:port`) reads each request's
//! head with `httparse` (the parser hyper itself uses), reads its
//! `Content-Length` body, writes the bytes unchanged to an upstream
//! connection of its own client connection, and hands the answer back the
//! same way. Arranged as pusher-cutover and `hyper_floor` are (one
//! single-threaded tokio runtime per core, connections handed to them in
//! turn). It knows only what the benchmark sends: no chunked bodies, no
//! `Expect`, no pipelining, no header rewriting, no timeouts; anything else
//! closes the connection. Not for use in front of anything.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod floor;

/// Most header lines a head may have.
const MAX_HEADERS: usize = 32;

fn main() -> std::io::Result<()> {
    floor::run("httparse_floor", |stream, upstream| async move {
        let _ = serve(stream, upstream).await;
    })
}

async fn serve(client: std::net::TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut client = TcpStream::from_std(client)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut from_client = BytesMut::with_capacity(8192);
    let mut from_up = BytesMut::with_capacity(8192);
    loop {
        let Some(len) = message(&mut client, &mut from_client, Kind::Request).await? else {
            return Ok(());
        };
        up.write_all(&from_client[..len]).await?;
        let _ = from_client.split_to(len);
        let Some(len) = message(&mut up, &mut from_up, Kind::Response).await? else {
            return Ok(());
        };
        client.write_all(&from_up[..len]).await?;
        let _ = from_up.split_to(len);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Request,
    Response,
}

/// Reads from `io` into `buf` until it holds a whole message (head and
/// `Content-Length` body); its length, or `None` if `io` closed before one
/// began.
async fn message(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    kind: Kind,
) -> std::io::Result<Option<usize>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    loop {
        if let Some((head, body)) = parse(buf, kind).map_err(|e| invalid(&e.to_string()))? {
            let total = head + body;
            while buf.len() < total {
                if io.read_buf(buf).await? == 0 {
                    return Err(invalid("closed within a body"));
                }
            }
            return Ok(Some(total));
        }
        if io.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(invalid("closed within a head"))
            };
        }
    }
}

/// The head's length and the body's, once `buf` holds the whole head.
fn parse(buf: &[u8], kind: Kind) -> Result<Option<(usize, usize)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let status = match kind {
        Kind::Request => httparse::Request::new(&mut headers).parse(buf)?,
        Kind::Response => httparse::Response::new(&mut headers).parse(buf)?,
    };
    let httparse::Status::Complete(head) = status else {
        return Ok(None);
    };
    let body = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some((head, body)))
}
