//! Logging: the subscriber the binary installs ([`init`]), the text log
//! format and the batching of log lines per worker thread.
//!
//! Every line, the per-request one included, is a `tracing` event. Every
//! request writes one line, so the line's cost is part of every request's
//! cost. [`LineFormat`] writes the same `key=value` text as
//! `tracing-subscriber`'s default format (timestamp, level, message,
//! fields; no spans, no colours), without its per-field formatting
//! machinery: strings that need no escaping are copied as they are,
//! numbers go through `itoa`, and the timestamp's date and time are formatted
//! once per second per thread.
//!
//! [`Batched`] collects a worker thread's lines in a buffer of its own and
//! hands them to the sink (the non-blocking writer) in one piece when the
//! buffer is full or when the worker's periodic [`flush_thread`] runs
//! (every 100 ms), instead of one hand-off, and often one wake-up of the
//! writer thread, per line. Threads that do not batch write each line
//! straight to the sink.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::io;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// A batch is handed on once it holds this much.
const BATCH_BYTES: usize = 16 * 1024;

/// Where finished lines (or batches of lines) go.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Whether this thread batches its lines.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    /// This thread's lines not yet handed to the sink.
    static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The timestamp text of the last whole second this thread formatted.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// The line [`LineFormat`] is formatting.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// How log lines look (the binary's `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text, [`LineFormat`].
    Text,
    /// One JSON object per line, fields flattened into it.
    Json,
}

/// Installs the process's subscriber: `RUST_LOG` (default `info`) decides
/// what is written, in `format`. Logs go to stderr through a background
/// writer, so a request never waits on the terminal or a pipe; lines are
/// never dropped (a full queue makes the writing thread wait instead).
/// Worker threads hand their lines over in batches ([`Batched`]). The
/// returned guard flushes on drop. Call once per process.
pub fn init(format: Format) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Entries are lines or batches of up to 16 KiB: at most ~4 MiB
        // waiting for a slow stderr before writers wait.
        .buffered_lines_limit(256)
        .thread_name("pusher-cutover-log")
        // What the log thread finds queued is written in one go.
        .finish(io::BufWriter::with_capacity(64 * 1024, io::stderr()));
    let sink = move |bytes: &[u8]| {
        let _ = io::Write::write_all(&mut writer.clone(), bytes);
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Batched::new(sink));
    match format {
        Format::Text => builder.event_format(LineFormat).init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// A [`MakeWriter`] whose lines go to the process's sink, batched on
/// threads that called [`batch_this_thread`].
#[derive(Debug, Clone, Copy)]
pub struct Batched(());

impl Batched {
    /// Sends lines to `sink`. The sink is set once per process: if one is
    /// set already, `sink` is dropped and lines keep going to the first.
    pub fn new(sink: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        let _ = SINK.set(Box::new(sink));
        Self(())
    }
}

/// Makes the calling thread batch its log lines until [`flush_thread`].
/// Called by the worker threads of [`crate::http::server`].
pub fn batch_this_thread() {
    BATCHING.with(|b| b.set(true));
}

/// Hands the calling thread's pending lines to the sink.
pub fn flush_thread() {
    let Some(sink) = SINK.get() else { return };
    PENDING.with(|p| {
        if let Ok(mut pending) = p.try_borrow_mut()
            && !pending.is_empty()
        {
            sink(&pending);
            pending.clear();
        }
    });
}

/// One line being written.
#[derive(Debug)]
pub struct LineWriter(());

impl io::Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let Some(sink) = SINK.get() else {
            return Ok(line.len());
        };
        if !BATCHING.with(Cell::get) {
            sink(line);
            return Ok(line.len());
        }
        PENDING.with(|p| match p.try_borrow_mut() {
            Ok(mut pending) => {
                pending.extend_from_slice(line);
                if pending.len() >= BATCH_BYTES {
                    sink(&pending);
                    pending.clear();
                }
            }
            // Only reachable if the sink itself logs: write through.
            Err(_) => sink(line),
        });
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(())
    }
}

/// The text format: `2026-11-28T20:58:32.918933Z  WARN message key=value …`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        format_line(SystemTime::now(), writer, event)
    }
}

/// Writes `event` as one line stamped `now`: formatted into this thread's
/// [`LINE`] and handed to `writer` in one piece, rather than piece by piece
/// through its `dyn Write` (a dynamic call per separator, name and value).
fn format_line(now: SystemTime, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            write_event(&mut *line, now, event)?;
            writer.write_str(&line)
        }
        // Only reachable if formatting a value logs: straight to `writer`.
        Err(_) => write_event(&mut writer, now, event),
    })
}

/// The line of `event`, stamped `now`, newline included.
fn write_event<W: fmt::Write + ?Sized>(
    w: &mut W,
    now: SystemTime,
    event: &Event<'_>,
) -> fmt::Result {
    head(w, now, *event.metadata().level())?;
    let mut fields = Fields::new(w);
    event.record(&mut fields);
    fields.result?;
    w.write_char('\n')
}

/// The timestamp and the level: `2026-11-28T20:58:32.918933Z  WARN `.
fn head<W: fmt::Write + ?Sized>(w: &mut W, now: SystemTime, level: Level) -> fmt::Result {
    // A wall clock set before 1970 is the host's problem, not a broken
    // invariant of ours: such lines say 1970-01-01T00:00:00.000000Z.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    timestamp(w, since.as_secs(), since.subsec_micros())?;
    w.write_str(match level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    })
}

/// `2026-11-28T20:58:32.918933Z`; the part up to the seconds is cached.
fn timestamp<W: fmt::Write + ?Sized>(writer: &mut W, secs: u64, micros: u32) -> fmt::Result {
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            let at = crate::clock::datetime(secs);
            let _ = write!(
                cached.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            );
            cached.0 = secs;
        }
        writer.write_str(&cached.1)
    })?;
    zero_padded(writer, u64::from(micros), 6)?;
    writer.write_char('Z')
}

/// `n` in decimal, with leading zeros to `width` digits (`width` ≤ 6).
fn zero_padded<W: fmt::Write + ?Sized>(w: &mut W, n: u64, width: usize) -> fmt::Result {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    let pad = width.saturating_sub(text.len()).min(6);
    w.write_str(&"000000"[..pad])?;
    w.write_str(text)
}

/// Writes an event's message and fields, space-separated: the one place
/// that decides how each kind of value looks.
struct Fields<'w, W: fmt::Write + ?Sized> {
    writer: &'w mut W,
    first: bool,
    result: fmt::Result,
}

impl<'w, W: fmt::Write + ?Sized> Fields<'w, W> {
    fn new(writer: &'w mut W) -> Self {
        Self {
            writer,
            first: true,
            result: Ok(()),
        }
    }

    /// Writes the next item: the message bare, a field as `name=value`.
    fn put(&mut self, name: &str, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                self.writer.write_str(name)?;
                self.writer.write_char('=')?;
            }
            value(self.writer)
        })();
    }
}

impl<W: fmt::Write + ?Sized> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.put(field.name(), |w| {
            if message {
                w.write_str(value)
            } else {
                quoted(w, value)
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), |w| {
            w.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), |w| {
            w.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), |w| {
            w.write_str(if value { "true" } else { "false" })
        });
    }

    /// Milliseconds and the like: three decimals are plenty for a log.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), |w| {
            let thousandths = (value * 1000.0).round();
            if !(0.0..1e15).contains(&thousandths) {
                return write!(w, "{value}");
            }
            let thousandths = thousandths as u64;
            w.write_str(itoa::Buffer::new().format(thousandths / 1000))?;
            w.write_char('.')?;
            zero_padded(w, thousandths % 1000, 3)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), |w| write!(w, "{value:?}"));
    }
}

/// `"value"`: copied as is when it is printable ASCII without `"` or `\`,
/// otherwise escaped as Rust's `Debug` does, so a value can never break the
/// line or forge another one.
fn quoted<W: fmt::Write + ?Sized>(w: &mut W, value: &str) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Collect {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Collect {
        type Writer = Collect;
        fn make_writer(&'a self) -> Collect {
            self.clone()
        }
    }

    /// What [`LineFormat`] writes, stamped `now`, for the events `emit`
    /// sends (at every level).
    pub(crate) fn event_at(now: SystemTime, emit: impl FnOnce()) -> String {
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .event_format(FixedTime(now))
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    /// The JSON line the binary's `--log-format json` subscriber writes
    /// for the one event `emit` sends, parsed.
    pub(crate) fn json_of(emit: impl FnOnce()) -> serde_json::Value {
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().expect("lock").clone();
        serde_json::from_slice(&bytes).expect("one JSON object")
    }

    fn line_of(emit: impl FnOnce()) -> String {
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(LineFormat)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn writes_the_default_formats_fields() {
        let addr: std::net::IpAddr = [127, 0, 0, 1].into();
        let line = line_of(|| {
            tracing::warn!(
                method = %"POST",
                app_id = Some("4242"),
                status = 202u16,
                upstream_status = None::<u16>,
                latency_ms = 1.393_123_000_000_000_1,
                user_agent = "ua \"quoted\"\nnext",
                client_addr = %addr,
                ok = true,
                delta = -3i64,
                "legacy call"
            )
        });
        let (stamp, rest) = line.split_once(' ').expect("timestamp");
        assert_eq!(stamp.len(), "2026-11-28T20:58:32.918933Z".len(), "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        assert_eq!(
            rest,
            " WARN legacy call method=POST app_id=\"4242\" status=202 latency_ms=1.393 \
             user_agent=\"ua \\\"quoted\\\"\\nnext\" client_addr=127.0.0.1 ok=true delta=-3\n"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // `date -u -d @951782459` gives 2000-02-29T00:00:59 (a leap day).
        let at = UNIX_EPOCH + std::time::Duration::new(951_782_459, 18_933_000);
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(FixedTime(at))
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!("x"));
        let line = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(line, "2000-02-29T00:00:59.018933Z  INFO x\n");
    }

    #[test]
    fn fractions_keep_their_leading_zeros() {
        let line = line_of(|| tracing::info!(a = 2.0047, b = 0.0, "m"));
        assert!(line.ends_with(" INFO m a=2.005 b=0.000\n"), "{line}");
    }

    /// The only test that sets the process's sink.
    #[test]
    fn batching_threads_hand_their_lines_over_together() {
        use std::io::Write as _;
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = got.clone();
        let batched = Batched::new(move |b: &[u8]| sink.lock().expect("lock").push(b.to_vec()));
        let handed = {
            let got = got.clone();
            move || got.lock().expect("lock").clone()
        };

        std::thread::spawn(move || batched.make_writer().write_all(b"plain\n"))
            .join()
            .expect("thread")
            .expect("write");
        assert_eq!(
            handed(),
            vec![b"plain\n".to_vec()],
            "a plain thread writes through"
        );

        std::thread::spawn(move || {
            batch_this_thread();
            let mut w = batched.make_writer();
            w.write_all(b"one\n")?;
            w.write_all(b"two\n")?;
            let before_flush = got.lock().expect("lock").len();
            flush_thread();
            flush_thread(); // nothing pending: nothing handed over
            Ok::<_, io::Error>(before_flush)
        })
        .join()
        .expect("thread")
        .map(|before_flush| assert_eq!(before_flush, 1, "held until the flush"))
        .expect("write");
        assert_eq!(handed(), vec![b"plain\n".to_vec(), b"one\ntwo\n".to_vec()]);

        let big = vec![b'x'; BATCH_BYTES];
        std::thread::spawn(move || {
            batch_this_thread();
            batched.make_writer().write_all(&big)
        })
        .join()
        .expect("thread")
        .expect("write");
        assert_eq!(handed().len(), 3, "a full batch goes at once");
    }

    /// [`LineFormat`] at a fixed time.
    struct FixedTime(SystemTime);

    impl<S, N> FormatEvent<S, N> for FixedTime
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            _ctx: &FmtContext<'_, S, N>,
            writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            format_line(self.0, writer, event)
        }
    }
}
