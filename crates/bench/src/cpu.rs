//! CPU time of a process (user + system), from `/proc/<pid>/stat`: what an upload costs
//! each side in CPU seconds, whatever else the machine was doing meanwhile.

use std::time::Duration;

use anyhow::Context as _;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, 100 per second on every
/// architecture it supports (the kernel converts from its own HZ).
const TICKS_PER_SECOND: u64 = 100;

/// A process's state and CPU time so far, read from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// The state letter (`R`, `S`, `D`, `Z` for a process that exited and was not reaped).
    pub state: char,
    /// User plus system CPU time.
    pub cpu: Duration,
}

impl ProcessStat {
    /// Reads process `pid` (`None`: this process).
    pub fn of(pid: Option<u32>) -> anyhow::Result<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_owned(),
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_stat(&text).with_context(|| format!("unexpected {path}: {text:?}"))
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces or parentheses, so fields are counted after its last `)`: the state
/// is field 3, utime and stime fields 14 and 15.
fn parse_stat(text: &str) -> Option<ProcessStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(ProcessStat {
        state,
        cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
    })
}

/// The CPU time a process spends during a closed loop's timed window (after its warm-up),
/// sampled on the side so the loop itself is untouched: what each call costs that process,
/// which the machine's other load disturbs far less than the rate.
pub struct CpuWindow {
    sampled: tokio::task::JoinHandle<anyhow::Result<Duration>>,
}

impl CpuWindow {
    /// Starts sampling process `pid` (`None`: this process) from `warmup` from now, for
    /// `duration`: call it right before starting a closed loop with the same two settings.
    pub fn start(pid: Option<u32>, warmup: Duration, duration: Duration) -> Self {
        let from = tokio::time::Instant::now() + warmup;
        let sampled = tokio::spawn(async move {
            tokio::time::sleep_until(from).await;
            let before = ProcessStat::of(pid)?.cpu;
            tokio::time::sleep_until(from + duration).await;
            let after = ProcessStat::of(pid)?.cpu;
            Ok(after.saturating_sub(before))
        });
        Self { sampled }
    }

    /// The CPU time spent in the window (waits for its end).
    pub async fn finish(self) -> anyhow::Result<Duration> {
        self.sampled
            .await
            .context("the CPU sampling task panicked")?
    }
}

/// Microseconds of `cpu` per call, for `calls` calls.
pub fn micros_per_call(cpu: Duration, calls: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / (calls as f64).max(1.0)
}

/// CPU seconds per GiB: `cpu` spent moving `bytes`.
pub fn seconds_per_gib(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() / (bytes as f64 / f64::from(1u32 << 30)).max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// utime and stime are counted after the command name, even one with spaces and
    /// parentheses, and converted from ticks.
    #[test]
    fn parses_times_after_an_awkward_name() {
        let line = "4242 (we (ird) name) Z 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(stat.state, 'Z');
        assert_eq!(stat.cpu, Duration::from_millis(1750));
        assert!(parse_stat("garbage").is_none());
    }

    /// This process's own figures are readable, and a GiB in one second is 1 s/GiB.
    #[test]
    fn own_process_and_rate() {
        let stat = ProcessStat::of(None).expect("own stat");
        assert!(matches!(stat.state, 'R' | 'S' | 'D'), "{stat:?}");
        assert!((seconds_per_gib(Duration::from_secs(2), 1 << 30) - 2.0).abs() < 1e-9);
    }
}
