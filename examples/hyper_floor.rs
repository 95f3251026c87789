//! The least a hyper-based proxy can do per request: the floor under
//! pusher-cutover's own cost, measured by `bench/run.sh` next to it.
//!
//! `hyper_floor LISTEN UPSTREAM` (both `host:port`) forwards every request,
//! unchanged and unchecked, to `UPSTREAM` and streams the answer back. It
//! is arranged as pusher-cutover is (one single-threaded tokio runtime per
//! core, connections handed to them in turn by an accepting thread, hyper's
//! HTTP/1 server and client connections) but with nothing else: no routing,
//! verification, translation, signing, header rewriting, pool, timeouts,
//! metrics or logs; each client connection gets an upstream connection of
//! its own. Not for use in front of anything: it exists to show what
//! hyper and tokio alone cost on a machine.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

mod floor;

fn main() -> std::io::Result<()> {
    floor::run("hyper_floor", serve)
}

async fn serve(stream: std::net::TcpStream, upstream: SocketAddr) {
    let Ok(stream) = TcpStream::from_std(stream) else {
        return;
    };
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await
    else {
        return;
    };
    tokio::spawn(connection);
    let sender = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |req: Request<Incoming>| forward(sender.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type Sender = Arc<Mutex<Option<SendRequest<Incoming>>>>;

async fn forward(sender: Sender, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
    let taken = sender.lock().map_err(|e| e.to_string())?.take();
    let mut send = taken.ok_or("no upstream connection")?;
    send.ready().await.map_err(|e| e.to_string())?;
    let response = send.send_request(req).await.map_err(|e| e.to_string())?;
    if let Ok(mut slot) = sender.lock() {
        *slot = Some(send);
    }
    Ok(response)
}
