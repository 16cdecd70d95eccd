//! A server's log lines, written out by a thread of their own in batches.
//!
//! A call that logs appends its formatted line to a shared buffer (a short lock and a copy)
//! and goes on; it never waits for stderr. The writer thread sleeps until the buffer has
//! something, then lets [`BATCH_DELAY`] pass so that the lines of every call finishing
//! meanwhile join the same batch, and writes them all with one `write(2)`. Under load that
//! makes a line cost a share of one system call and of one thread wake-up every
//! [`BATCH_DELAY`], instead of a wake-up and a system call of its own (what a
//! channel-per-line writer such as `tracing_appender::non_blocking` costs: measured at
//! about a fifth of a SayHello call's server CPU, see BENCHMARKS.md).
//!
//! The buffer is bounded ([`MAX_PENDING`] bytes): when stderr stops taking lines (a full
//! pipe nobody reads), later lines are dropped, not queued, and once it takes them again a
//! warning says how many were lost. Nothing is allocated up front, so an idle server
//! holds no log memory.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
    thread,
    time::Duration,
};

/// How long the writer thread lets lines gather once the first one of a batch arrived: the
/// most a line waits before it is written, and the least time between two writes.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

/// Bytes of lines waiting to be written, at most; lines that do not fit are dropped. At a
/// few hundred bytes a line that is several thousand lines, more than the busiest server
/// logs in the time stderr may reasonably take to accept a write.
pub const MAX_PENDING: usize = 1024 * 1024;

/// Capacity the writer thread keeps between batches: after a burst it gives back what it
/// grew beyond this, so a one-off flood does not hold memory for the rest of the run.
const KEEP_CAPACITY: usize = 64 * 1024;

/// How long dropping the guard waits for the last lines to be written: a stderr nobody
/// reads would never take them, and a server must still exit.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What the callers and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// What the output is, for the warning about dropped lines (`stderr`, `stdout`).
    output_name: &'static str,
    state: Mutex<State>,
    /// Signalled when the buffer stops being empty, and when the guard is dropped.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<u8>,
    /// Lines dropped since the last batch was written.
    dropped: u64,
    stopping: bool,
}

impl Shared {
    /// The state, also after a panic elsewhere while it was held (it stays consistent: every
    /// change to it is a single append, swap or assignment).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) a subscriber formats lines into.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
    max_pending: usize,
}

/// Keeps the writer thread running; dropping it writes out what is waiting (waiting at most
/// a second) and stops the thread.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    finished: mpsc::Receiver<()>,
}

/// Starts a thread named `thread_name` writing batches of lines to `output`, which the
/// warning about dropped lines calls `output_name`.
pub fn spawn<W>(
    thread_name: &str,
    output: W,
    output_name: &'static str,
) -> io::Result<(LogWriter, LogWriterGuard)>
where
    W: Write + Send + 'static,
{
    spawn_with_limit(thread_name, output, output_name, MAX_PENDING)
}

fn spawn_with_limit<W>(
    thread_name: &str,
    mut output: W,
    output_name: &'static str,
    max_pending: usize,
) -> io::Result<(LogWriter, LogWriterGuard)>
where
    W: Write + Send + 'static,
{
    let shared = Arc::new(Shared {
        output_name,
        ..Shared::default()
    });
    let (finished_sender, finished) = mpsc::channel();
    let thread_shared = Arc::clone(&shared);
    thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || {
            write_batches(&thread_shared, &mut output);
            // The guard may have stopped waiting; nobody to tell then.
            let _ = finished_sender.send(());
        })?;
    let writer = LogWriter {
        shared: Arc::clone(&shared),
        max_pending,
    };
    Ok((writer, LogWriterGuard { shared, finished }))
}

/// The writer thread: waits for lines, gathers a batch, writes it, until the guard is
/// dropped and everything before that is written.
fn write_batches(shared: &Shared, output: &mut impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.stopping {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if !state.stopping {
            drop(state);
            thread::sleep(BATCH_DELAY);
            state = shared.lock();
        }
        std::mem::swap(&mut batch, &mut state.pending);
        let dropped = std::mem::take(&mut state.dropped);
        let stopping = state.stopping;
        drop(state);

        // A stderr that fails (closed) loses these lines; there is nowhere else to say so.
        let _ = output.write_all(&batch).and_then(|()| output.flush());
        batch.clear();
        batch.shrink_to(KEEP_CAPACITY);
        if dropped > 0 {
            // Logged like any line, so it has the subscriber's format (text or JSON), and
            // written with the next batch.
            tracing::warn!(
                dropped,
                "log lines dropped: {} was not taking them fast enough",
                shared.output_name
            );
        }
        if stopping && shared.lock().pending.is_empty() {
            return;
        }
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        let _ = self.finished.recv_timeout(FINAL_FLUSH_TIMEOUT);
    }
}

impl LogWriter {
    /// Queues `text` (whole lines) to be written, or, when it does not fit in what may be
    /// waiting, drops all of it and returns false (uncounted: the caller says what it
    /// dropped). Never blocks on the output.
    pub fn append(&self, text: &[u8]) -> bool {
        self.queue(text, false)
    }

    /// Queues `text`, or drops it (counted for the warning when `count_drop`), under one
    /// lock; wakes the thread for the first text of a batch only.
    fn queue(&self, text: &[u8], count_drop: bool) -> bool {
        let mut state = self.shared.lock();
        if state.pending.len() + text.len() > self.max_pending {
            if count_drop {
                state.dropped += 1;
            }
            return false;
        }
        let was_empty = state.pending.is_empty();
        state.pending.extend_from_slice(text);
        drop(state);
        // The rest of a batch finds the thread awake.
        if was_empty {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Bytes waiting to be written: how far the output is behind.
    pub fn pending_bytes(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// The most bytes that may wait.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }
}

/// What the subscriber writes each line through: a borrow, so a line costs no reference
/// count traffic on the shared state (two atomic operations on one cache line that every
/// thread logging at once would contend for).
impl Write for &LogWriter {
    /// Queues `line` (the subscriber writes each formatted line with one call), or drops it
    /// when [`MAX_PENDING`] bytes are already waiting, to be counted in a warning once the
    /// output takes lines again. Never blocks on the output.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.queue(line, true);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        (&*self).write(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'writer> tracing_subscriber::fmt::MakeWriter<'writer> for LogWriter {
    type Writer = &'writer LogWriter;

    fn make_writer(&'writer self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test can read, and hold shut.
    #[derive(Clone, Default)]
    struct Captured {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().map_err(|_| io::Error::other("gate"))?;
            self.bytes
                .lock()
                .map_err(|_| io::Error::other("bytes"))?
                .extend_from_slice(bytes);
            *self.writes.lock().map_err(|_| io::Error::other("writes"))? += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().expect("bytes").clone()).expect("utf-8")
        }
    }

    /// Every line reaches the output, in order, by the time the guard is dropped, and lines
    /// written together go out in far fewer writes than lines.
    #[test]
    fn writes_every_line_in_order_in_batches() {
        let output = Captured::default();
        let (writer, guard) =
            spawn("test-log-writer", output.clone(), "test output").expect("spawn");
        for n in 0..1000 {
            writer
                .clone()
                .write_all(format!("line {n}\n").as_bytes())
                .expect("write");
        }
        drop(guard);
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(output.text(), expected);
        let writes = *output.writes.lock().expect("writes");
        assert!(writes < 100, "{writes} writes for 1000 lines");
    }

    /// A line logged long after the previous one is still written within a few batch
    /// delays, without waiting for others.
    #[test]
    fn a_lone_line_is_written_promptly() {
        let output = Captured::default();
        let (mut writer, _guard) =
            spawn("test-log-writer", output.clone(), "test output").expect("spawn");
        writer.write_all(b"alone\n").expect("write");
        let started = Instant::now();
        while output.text().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the line was not written"
            );
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(output.text(), "alone\n");
    }

    /// With the output stuck, callers never block: lines beyond the limit are dropped, and
    /// once the output takes lines again, what was kept is written in full.
    #[test]
    fn stuck_output_drops_lines_instead_of_blocking_callers() {
        let output = Captured::default();
        let held = output.gate.lock().expect("gate");
        let (writer, guard) =
            spawn_with_limit("test-log-writer", output.clone(), "test output", 1024)
                .expect("spawn");
        let mut line = [b'x'; 100];
        line[99] = b'\n';
        let started = Instant::now();
        // The first batch is taken by the thread (and blocks in write); then 10 lines of
        // 100 bytes fit the 1 KiB limit and the rest are dropped.
        let mut first = writer.clone();
        first.write_all(b"first\n").expect("write");
        thread::sleep(BATCH_DELAY * 10);
        for _ in 0..1000 {
            writer.clone().write_all(&line).expect("write");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "callers waited for a stuck output"
        );
        assert!(writer.shared.lock().dropped > 0);
        assert!(writer.shared.lock().pending.len() <= 1024);
        drop(held);
        drop(guard);
        let text = output.text();
        assert!(text.starts_with("first\n"));
        assert!(text.len() <= "first\n".len() + 1024, "{} bytes", text.len());
        assert!(text.len() > "first\n".len() + 512, "{} bytes", text.len());
    }
}
