//! What the bare forwarders (`hyper_floor`, `httparse_floor`) share: the
//! command line, the process arrangement of pusher-cutover (one
//! single-threaded tokio runtime per core, connections handed to them in
//! turn by an accepting thread), and an exit on SIGTERM.

use std::future::Future;
use std::net::SocketAddr;

/// The allocator of pusher-cutover's binary (src/main.rs), with its purge
/// delay set as the binary sets it: the floor is measured on the same
/// allocator, not the system's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
#[path = "../../src/allocator.rs"]
mod allocator;

/// Runs the forwarder `name`: `name LISTEN UPSTREAM` (both `host:port`),
/// every accepted connection served by `serve(connection, upstream)` on a
/// worker thread's runtime.
pub fn run<F, Fut>(name: &str, serve: F) -> std::io::Result<()>
where
    F: Fn(std::net::TcpStream, SocketAddr) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    #[cfg(feature = "mimalloc")]
    allocator::purge_freed_memory_soon();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: {name} LISTEN UPSTREAM   (both host:port)");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = std::net::TcpListener::bind(&listen)?;
    // SIGTERM ends the process through exit(), so that an instrumented
    // build (bench/pgo.sh) writes its profile.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        signals.block_on(async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        });
        std::process::exit(0);
    });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut senders = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                while let Some(stream) = rx.recv().await {
                    tokio::spawn(serve(stream, upstream));
                }
            })
        });
        senders.push(tx);
    }
    for (i, stream) in listener.incoming().enumerate() {
        let stream = stream?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        if senders[i % workers].send(stream).is_err() {
            break;
        }
    }
    Ok(())
}
