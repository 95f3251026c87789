//! Logging: the subscriber the binary installs ([`init`]), the text log
//! format, the batching of log lines per worker thread, and the writer
//! thread that puts every thread's lines back in time order.
//!
//! Every line, the per-request one included, is a `tracing` event. Every
//! request writes one line, so the line's cost is part of every request's
//! cost. [`LineFormat`] writes the same `key=value` text as
//! `tracing-subscriber`'s default format (timestamp, level, message,
//! fields; no spans, no colours), without its per-field formatting
//! machinery: strings that need no escaping are copied as they are,
//! numbers go through `itoa`, and the timestamp's date and time are formatted
//! once per second per thread. Durations (`f64` milliseconds) are written to
//! the microsecond, in both formats.
//!
//! [`Batched`] collects a worker thread's lines in a buffer of its own and
//! hands them to the sink in one piece when the buffer is full or when the
//! worker's periodic [`flush_thread`] runs (every 10 ms), instead of one
//! hand-off, and often one wake-up of the writer thread, per line. Threads
//! that do not batch hand each line over at once. Each line travels with
//! the timestamp it prints (`STAMP`), and the writer thread ([`Merger`])
//! holds lines for [`HOLD`] (longer than a batch can wait) and writes them
//! in timestamp order: one line per event, in time order across threads,
//! while the batching keeps its benefit on the request path. It writes
//! what has come of age at most every 10 ms, in one write: woken for each
//! line as it came of age, it cost a wake-up and a write per request.

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

/// Where finished lines (or batches of lines) go: their bytes, and each
/// line's timestamp (microseconds since the epoch) and end offset.
type Sink = Box<dyn Fn(&[u8], &[LineEnd]) + Send + Sync>;

/// A line in a batch: its timestamp (microseconds since the epoch) and the
/// offset just past its newline.
pub type LineEnd = (u64, usize);

/// Lines not yet written: their bytes and each one's [`LineEnd`].
type Lines = (Vec<u8>, Vec<LineEnd>);

/// How long the writer thread holds a line before writing it, so that a
/// line another thread stamped earlier but handed over later (in a batch,
/// at most [`crate::http::server`]'s 10 ms flush later) is written first.
/// What is held costs memory: every line of the last `HOLD` (at 28,000
/// requests a second, 250 ms held 2.3 MiB more at the peak than 60 ms,
/// and 60 ms about 2.7 MB more than 30 ms with 1,000 connections).
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(30);

/// The writer thread writes at most this often (microseconds): what is due
/// goes out together, in one write, instead of a wake-up and a write per
/// line as each line comes of age.
const WRITE_EVERY_MICROS: u64 = 10_000;

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Whether this thread batches its lines.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    /// This thread's lines not yet handed to the sink, and each one's
    /// timestamp and end.
    static PENDING: RefCell<Lines> =
        const { RefCell::new((Vec::new(), Vec::new())) };
    /// The timestamp (microseconds since the epoch) of the line being
    /// formatted on this thread, set by the formats and taken by the writer.
    static STAMP: Cell<Option<u64>> = const { Cell::new(None) };
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
/// writer ([`Merger`]), so a request never waits on the terminal or a
/// pipe; lines are never dropped (a full queue makes the writing thread
/// wait instead), and they are written in time order. Worker threads hand
/// their lines over in batches ([`Batched`]). The returned guard writes
/// what is held and flushes on drop. Call once per process.
pub fn init(format: Format) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, guard) = Merger::spawn(io::stderr(), HOLD);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Batched::new(sink));
    match format {
        Format::Text => builder.event_format(LineFormat).init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_timer(StampedTime)
            .init(),
    }
    route_panics_to_the_log();
    guard
}

/// The log writer's thread.
const LOG_THREAD: &str = "pusher-cutover-log";

/// Routes panics through the log: one ERROR line, in the log's format, with
/// the panic's message, where it happened and the thread (and the
/// backtrace when `RUST_BACKTRACE` asks for one), so that a bug shows in
/// JSON logs as an event rather than as loose lines on stderr. Where the log
/// cannot take the line, the standard hook prints it as before
/// ([`log_panic`]).
fn route_panics_to_the_log() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !log_panic(info) {
            standard(info);
        }
    }));
}

/// Logs the panic `info` at ERROR, hands the line on at once (a worker
/// thread batches its lines, and a panic may end the thread), and says
/// so; `false`, having logged nothing, where the line would be lost: on
/// the log writer's own thread, with no subscriber (or inside a scoped one,
/// where tracing drops nested events), or with ERROR filtered out. A panic
/// inside the process-wide subscriber is logged through it again: the
/// text format's buffers and the line writer fall back when re-entered.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let current = std::thread::current();
    if current.name() == Some(LOG_THREAD)
        || tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>())
        || !tracing::enabled!(Level::ERROR)
    {
        return false;
    }
    let message = panic_text(info.payload());
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = current.name().unwrap_or("unnamed");
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(panic = %message, %location, %thread, %backtrace, "panic (a bug: please report it)");
    } else {
        tracing::error!(panic = %message, %location, %thread, "panic (a bug: please report it)");
    }
    flush_thread();
    true
}

/// A panic's message: its payload when that is text (what `panic!` makes).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The JSON format's timestamp: the same text as [`LineFormat`]'s,
/// recorded as the line's `STAMP` so the writer can order it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StampedTime;

impl tracing_subscriber::fmt::time::FormatTime for StampedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        STAMP.with(|s| s.set(Some(micros_of(since))));
        timestamp(w, since.as_secs(), since.subsec_micros())
    }
}

/// Microseconds since the epoch.
fn micros_of(since: std::time::Duration) -> u64 {
    since.as_secs() * 1_000_000 + u64::from(since.subsec_micros())
}

/// This line's timestamp: the one its format printed, else now.
fn take_stamp() -> u64 {
    STAMP.with(Cell::take).unwrap_or_else(|| {
        micros_of(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    })
}

/// Flushes the writer thread when dropped: every line held is written.
#[derive(Debug)]
pub struct Guard {
    queue: std::sync::mpsc::SyncSender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.queue.send(Message::Finish);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the writer thread is sent.
enum Message {
    /// Lines: their bytes, each one's timestamp and end offset.
    Lines(Vec<u8>, Vec<LineEnd>),
    /// Write everything held and stop.
    Finish,
}

/// The writer thread's state: batches of lines, each in its own order,
/// merged by timestamp. A line is written once it is [`HOLD`] old (or at
/// the end); one that arrives older than a line already written (its
/// thread was held up longer than the hold) is written at once rather than
/// kept back.
pub struct Merger<W: io::Write> {
    out: W,
    hold_micros: u64,
    /// Batches not yet written out, each with the index of its next line.
    batches: std::collections::HashMap<u64, (Lines, usize)>,
    /// The next line of each batch: (timestamp, batch id).
    next: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    ids: u64,
}

impl<W: io::Write> std::fmt::Debug for Merger<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Merger")
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl<W: io::Write> Merger<W> {
    /// A merger writing to `out`, holding lines for `hold`.
    pub fn new(out: W, hold: std::time::Duration) -> Self {
        Self {
            out,
            hold_micros: u64::try_from(hold.as_micros()).unwrap_or(u64::MAX),
            batches: std::collections::HashMap::new(),
            next: std::collections::BinaryHeap::new(),
            ids: 0,
        }
    }

    /// Takes a batch of lines: `bytes`, with each line's timestamp and end
    /// offset.
    pub fn push(&mut self, bytes: Vec<u8>, lines: Vec<LineEnd>) {
        let Some(&(first, _)) = lines.first() else {
            return;
        };
        let id = self.ids;
        self.ids += 1;
        self.batches.insert(id, ((bytes, lines), 0));
        self.next.push(std::cmp::Reverse((first, id)));
    }

    /// When the next held line is due (microseconds since the epoch), if
    /// any line is held.
    pub fn next_due(&self) -> Option<u64> {
        self.next
            .peek()
            .map(|std::cmp::Reverse((stamp, _))| stamp.saturating_add(self.hold_micros))
    }

    /// Writes, in timestamp order, every line stamped at or before
    /// `now_micros` minus the hold (every line, with `u64::MAX`). Returns
    /// the time the next held line is due, if any.
    ///
    /// A line the output refuses (a full disk, a reader gone) is dropped,
    /// as are the others due with it: each is taken off as it would have
    /// been written, so that lines are not kept, for ever, for an output
    /// that may never take them again. The first error is returned, after
    /// every due line was gone through.
    pub fn write_due(&mut self, now_micros: u64) -> io::Result<Option<u64>> {
        let cutoff = now_micros.saturating_sub(self.hold_micros);
        let mut wrote = false;
        let mut failed = None;
        while let Some(&std::cmp::Reverse((stamp, id))) = self.next.peek() {
            if stamp > cutoff && now_micros != u64::MAX {
                break;
            }
            self.next.pop();
            let Some(((bytes, lines), cursor)) = self.batches.get_mut(&id) else {
                continue;
            };
            let start = match *cursor {
                0 => 0,
                i => lines[i - 1].1,
            };
            let end = lines[*cursor].1;
            if failed.is_none() {
                match self
                    .out
                    .write_all(bytes.get(start..end).unwrap_or_default())
                {
                    Ok(()) => wrote = true,
                    Err(e) => failed = Some(e),
                }
            }
            *cursor += 1;
            match lines.get(*cursor) {
                Some(&(stamp, _)) => self.next.push(std::cmp::Reverse((stamp, id))),
                None => {
                    self.batches.remove(&id);
                }
            }
        }
        if wrote && failed.is_none() {
            self.out.flush()?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(self.next_due()),
        }
    }

    /// Starts the writer thread on `out`; returns the sink that feeds it
    /// and the guard that finishes it.
    fn spawn(out: W, hold: std::time::Duration) -> (Sink, Guard)
    where
        W: Send + 'static,
    {
        // Entries are lines or batches of up to 16 KiB: at most ~4 MiB
        // waiting for a slow stderr before writers wait.
        let (queue, incoming) = std::sync::mpsc::sync_channel::<Message>(256);
        let mut merger = Merger::new(io::BufWriter::with_capacity(64 * 1024, out), hold);
        let thread = std::thread::Builder::new()
            .name(LOG_THREAD.into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                // When to write next: when the oldest held line is due, but
                // at most every WRITE_EVERY_MICROS.
                let mut write_at: Option<u64> = None;
                loop {
                    let message = match write_at {
                        None => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => incoming.recv_timeout(std::time::Duration::from_micros(
                            at.saturating_sub(take_now()),
                        )),
                    };
                    match message {
                        Ok(Message::Lines(bytes, lines)) => merger.push(bytes, lines),
                        Ok(Message::Finish) | Err(RecvTimeoutError::Disconnected) => {
                            let _ = merger.write_due(u64::MAX);
                            return;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    let now = take_now();
                    match write_at {
                        Some(at) if now >= at => {
                            // A stderr that cannot be written loses its
                            // lines; the proxy keeps serving.
                            let due = merger.write_due(now).unwrap_or_else(|_| merger.next_due());
                            write_at = due.map(|due| due.max(now + WRITE_EVERY_MICROS));
                        }
                        Some(_) => {}
                        None => write_at = merger.next_due(),
                    }
                }
            })
            .ok();
        let sender = queue.clone();
        let sink = move |bytes: &[u8], lines: &[LineEnd]| {
            let _ = sender.send(Message::Lines(bytes.to_vec(), lines.to_vec()));
        };
        (Box::new(sink), Guard { queue, thread })
    }
}

/// Now, in microseconds since the epoch.
fn take_now() -> u64 {
    micros_of(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// A [`MakeWriter`] whose lines go to the process's sink, batched on
/// threads that called [`batch_this_thread`].
#[derive(Debug, Clone, Copy)]
pub struct Batched(());

impl Batched {
    /// Sends lines to `sink`. The sink is set once per process: if one is
    /// set already, `sink` is dropped and lines keep going to the first.
    pub fn new(sink: impl Fn(&[u8], &[LineEnd]) + Send + Sync + 'static) -> Self {
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
            && !pending.0.is_empty()
        {
            let (bytes, lines) = &mut *pending;
            sink(bytes, lines);
            bytes.clear();
            lines.clear();
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
        let stamp = take_stamp();
        if !BATCHING.with(Cell::get) {
            sink(line, &[(stamp, line.len())]);
            return Ok(line.len());
        }
        PENDING.with(|p| match p.try_borrow_mut() {
            Ok(mut pending) => {
                let (bytes, lines) = &mut *pending;
                bytes.extend_from_slice(line);
                lines.push((stamp, bytes.len()));
                if bytes.len() >= BATCH_BYTES {
                    sink(bytes, lines);
                    bytes.clear();
                    lines.clear();
                }
            }
            // Only reachable if the sink itself logs: write through.
            Err(_) => sink(line, &[(stamp, line.len())]),
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
    STAMP.with(|s| s.set(Some(micros_of(since))));
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

    /// `%` and `?` values. Line breaks in them (a TOML error's excerpt,
    /// say) are written as `\n` and `\r`: one event, one line.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), |w| write!(OneLine(w), "{value:?}"));
    }
}

/// Writes through to `W`, with `\n` and `\r` escaped.
struct OneLine<'w, W: fmt::Write + ?Sized>(&'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for OneLine<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.contains(['\n', '\r']) {
            return self.0.write_str(s);
        }
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.0.write_str("\\n")?;
            }
            for (j, piece) in part.split('\r').enumerate() {
                if j > 0 {
                    self.0.write_str("\\r")?;
                }
                self.0.write_str(piece)?;
            }
        }
        Ok(())
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
    use tracing_subscriber::fmt::time::FormatTime as _;

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
            .with_timer(StampedTime)
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
    fn displayed_values_never_break_the_line() {
        let line = line_of(|| tracing::error!(problems = %"a\n  b\r\nc", "m"));
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.ends_with(" ERROR m problems=a\\n  b\\r\\nc\n"),
            "{line}"
        );
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
        let batched = Batched::new(move |b: &[u8], lines: &[(u64, usize)]| {
            assert_eq!(
                lines.last().map(|l| l.1),
                Some(b.len()),
                "every line indexed"
            );
            sink.lock().expect("lock").push(b.to_vec());
        });
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

    /// Two threads' batches, handed over out of order, come out merged by
    /// timestamp; lines are held until they are `HOLD` old.
    #[test]
    fn the_writer_merges_batches_in_time_order() {
        let mut out = Vec::new();
        {
            let mut m = Merger::new(&mut out, std::time::Duration::from_micros(100));
            // Thread B's batch arrives first, thread A's (earlier lines) later.
            m.push(b"b20\nb40\n".to_vec(), vec![(20, 4), (40, 8)]);
            m.push(
                b"a10\na30\na50\n".to_vec(),
                vec![(10, 4), (30, 8), (50, 12)],
            );
            m.push(b"c35\n".to_vec(), vec![(35, 4)]);
            assert_eq!(
                m.write_due(125).expect("write"),
                Some(130),
                "held from 30 on"
            );
            assert_eq!(m.write_due(u64::MAX).expect("write"), None);
        }
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "a10\nb20\na30\nc35\nb40\na50\n"
        );
    }

    /// The writer thread writes what has come of age in one write per
    /// interval, not a write per line.
    #[test]
    fn the_writer_thread_writes_lines_together_not_one_by_one() {
        /// Counts the writes that reach it.
        struct Counting(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);
        impl io::Write for Counting {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("lock").push(b.len());
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, guard) = Merger::spawn(
            Counting(writes.clone()),
            std::time::Duration::from_millis(10),
        );
        // 200 lines handed over one at a time, about 1 ms apart: ~200 ms.
        let started = std::time::Instant::now();
        for i in 0..200 {
            let line = format!("line {i}\n");
            sink(line.as_bytes(), &[(take_now(), line.len())]);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let took = started.elapsed();
        drop(guard);
        let writes = writes.lock().expect("lock");
        assert_eq!(
            writes.iter().sum::<usize>(),
            (0..200).map(|i| format!("line {i}\n").len()).sum::<usize>(),
            "every line written"
        );
        // One write per WRITE_EVERY_MICROS at most, plus the final one.
        let bound = (took.as_micros() / u128::from(WRITE_EVERY_MICROS)) as usize + 2;
        assert!(
            writes.len() <= bound,
            "{} writes in {took:?} (at most {bound})",
            writes.len()
        );
    }

    /// An output that refuses lines (a full disk, a reader gone) loses
    /// them: they are dropped, not held for ever, and the lines due later
    /// are kept for when it takes them again.
    #[test]
    fn lines_an_output_refuses_are_dropped_not_held() {
        /// Refuses every write while `refusing` is set.
        struct Flaky(std::rc::Rc<std::cell::Cell<bool>>, Vec<u8>);
        impl io::Write for Flaky {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0.get() {
                    return Err(io::Error::other("disk full"));
                }
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let refusing = std::rc::Rc::new(std::cell::Cell::new(true));
        let mut m = Merger::new(
            Flaky(refusing.clone(), Vec::new()),
            std::time::Duration::ZERO,
        );
        for i in 0..1000u64 {
            m.push(format!("x{i}\n").into_bytes(), vec![(i, 5)]);
        }
        m.push(b"late\n".to_vec(), vec![(5000, 5)]);
        assert!(m.write_due(2000).is_err(), "the error is said");
        assert_eq!(m.batches.len(), 1, "the refused lines are gone");
        assert_eq!(m.next_due(), Some(5000), "the later one is kept");
        refusing.set(false);
        assert_eq!(m.write_due(u64::MAX).expect("write"), None);
        assert_eq!(m.out.1, b"late\n");
    }

    /// A line arriving after later ones were written is written at once,
    /// not lost.
    #[test]
    fn a_late_line_is_written_not_lost() {
        let mut out = Vec::new();
        {
            let mut m = Merger::new(&mut out, std::time::Duration::ZERO);
            m.push(b"b20\n".to_vec(), vec![(20, 4)]);
            assert_eq!(m.write_due(20).expect("write"), None);
            m.push(b"a10\n".to_vec(), vec![(10, 4)]);
            assert_eq!(m.write_due(20).expect("write"), None);
        }
        assert_eq!(String::from_utf8(out).expect("utf-8"), "b20\na10\n");
    }

    /// The JSON timestamp is the text format's, and it stamps the line.
    #[test]
    fn json_lines_carry_the_stamp_they_print() {
        let value = json_of(|| tracing::info!("x"));
        let printed = value["timestamp"].as_str().expect("timestamp").to_owned();
        assert_eq!(
            printed.len(),
            "2026-11-28T20:58:32.918933Z".len(),
            "{printed}"
        );
        let _ = STAMP.with(Cell::take);
        let mut w = String::new();
        StampedTime
            .format_time(&mut Writer::new(&mut w))
            .expect("format");
        let stamp = STAMP.with(Cell::take).expect("stamped");
        let at = crate::clock::datetime(stamp / 1_000_000);
        assert!(w.starts_with(&format!("{:04}-", at.year())), "{w}");
        assert!(
            w.ends_with(&format!("{:06}Z", stamp % 1_000_000)),
            "{w} {stamp}"
        );
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

    /// A panic on a thread with a subscriber becomes one ERROR line with
    /// its message, place and thread; without one (or while ERROR is
    /// filtered out) the standard hook takes it, and nothing is lost.
    #[test]
    fn a_panic_is_one_error_line_where_the_log_can_take_it() {
        let logged = Arc::new(Mutex::new(Vec::new()));
        let previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
            Arc::from(std::panic::take_hook());
        let fallback = previous.clone();
        let seen = logged.clone();
        // This test's own hook: the routing under test, and the test
        // harness's hook for panics the routing leaves (other tests'
        // threads have no subscriber of their own).
        std::panic::set_hook(Box::new(move |info| {
            if log_panic(info) {
                seen.lock().expect("lock").push(panic_text(info.payload()));
            } else {
                fallback(info);
            }
        }));
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .event_format(LineFormat)
            .finish();
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("boom at {}", 7))
        });
        let quiet = tracing_subscriber::fmt()
            .with_writer(Collect::default())
            .with_max_level(tracing::level_filters::LevelFilter::OFF)
            .finish();
        let unlogged = tracing::subscriber::with_default(quiet, || {
            std::panic::catch_unwind(|| panic!("filtered out"))
        });
        let bare = std::panic::catch_unwind(|| panic!("no subscriber"));
        let standard = previous.clone();
        std::panic::set_hook(Box::new(move |info| standard(info)));
        assert!(caught.is_err() && unlogged.is_err() && bare.is_err());

        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("ERROR"), "{text}");
        assert!(
            lines[0].contains("panic (a bug: please report it)"),
            "{text}"
        );
        assert!(lines[0].contains("panic=boom at 7"), "{text}");
        assert!(
            lines[0].contains("location=src/telemetry/logging.rs:"),
            "{text}"
        );
        assert!(lines[0].contains("thread="), "{text}");
        let routed = logged.lock().expect("lock").clone();
        assert!(routed.contains(&"boom at 7".to_owned()), "{routed:?}");
        assert!(!routed.contains(&"filtered out".to_owned()), "{routed:?}");
        assert!(!routed.contains(&"no subscriber".to_owned()), "{routed:?}");
    }
}
