//! The standard `process_*` series every Prometheus exporter publishes (start time, CPU,
//! memory, file descriptors), read from `/proc/self` at scrape time. Linux only: on
//! other systems the collector publishes nothing.
//!
//! Read by hand rather than with the `prometheus` crate's `process` feature, which
//! pulls in `procfs` and its dependencies for the same six numbers.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): fixed at 100 by the
/// kernel's user-space ABI on every architecture Rust targets with Linux.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says now.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub start_time_seconds: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// `utime + stime` (seconds) and `starttime` (seconds since boot) from the text of
/// `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state): field n is rest's (n - 3)th.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let cpu = (field(14)? + field(15)?) / USER_HZ;
    let start = field(22)? / USER_HZ;
    Some((cpu, start))
}

/// A `Name:   123 kB` line of `/proc/self/status`, in bytes.
fn status_kb(status: &str, key: &str) -> Option<f64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: f64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024.0)
    })
}

/// `btime` (boot time, unix seconds) from `/proc/stat`.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(f64::INFINITY);
    }
    soft.parse().ok()
}

impl Sample {
    /// Reads `/proc`; a file that cannot be read leaves its series out.
    pub fn read() -> Sample {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut s = Sample::default();
        if let Some((cpu, since_boot)) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
            s.cpu_seconds = Some(cpu);
            s.start_time_seconds = read("/proc/stat")
                .as_deref()
                .and_then(boot_time)
                .map(|b| b + since_boot);
        }
        if let Some(status) = read("/proc/self/status") {
            s.resident_bytes = status_kb(&status, "VmRSS");
            s.virtual_bytes = status_kb(&status, "VmSize");
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            // The directory handle being read is one of the entries: not counted.
            .map(|d| d.count().saturating_sub(1) as f64);
        s.max_fds = read("/proc/self/limits")
            .as_deref()
            .and_then(max_open_files);
        s
    }
}

/// The collector, registered in the same registry as refreshd's own series.
pub struct ProcessCollector {
    start_time: Gauge,
    cpu: Counter,
    resident: Gauge,
    virtual_: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let g = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        let start_time = g(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let resident = g(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_ = g(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = g("process_open_fds", "Number of open file descriptors.");
        let max_fds = g(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let descs = [&start_time, &resident, &virtual_, &open_fds, &max_fds]
            .iter()
            .flat_map(|m| m.desc().into_iter().cloned())
            .chain(cpu.desc().into_iter().cloned())
            .collect();
        Self {
            start_time,
            cpu,
            resident,
            virtual_,
            open_fds,
            max_fds,
            descs,
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !cfg!(target_os = "linux") {
            return Vec::new();
        }
        let s = Sample::read();
        let mut out = Vec::new();
        let mut gauge = |g: &Gauge, v: Option<f64>| {
            if let Some(v) = v {
                g.set(v);
                out.extend(g.collect());
            }
        };
        gauge(&self.start_time, s.start_time_seconds);
        gauge(&self.resident, s.resident_bytes);
        gauge(&self.virtual_, s.virtual_bytes);
        gauge(&self.open_fds, s.open_fds);
        gauge(&self.max_fds, s.max_fds);
        if let Some(cpu) = s.cpu_seconds {
            // A counter only goes up: add what was spent since the last scrape.
            let delta = cpu - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            out.extend(self.cpu.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        // Fields 3..: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime(14) stime(15) cutime cstime priority nice threads itrealvalue
        // starttime(22) vsize rss ...
        let stat =
            "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000 200 x";
        assert_eq!(parse_stat(stat), Some((3.0, 123.45)));
    }

    #[test]
    fn parses_status_limits_and_btime() {
        let status = "Name:\trefreshd\nVmSize:\t  20480 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(1024.0 * 1024.0));
        assert_eq!(status_kb(status, "VmSize"), Some(20480.0 * 1024.0));
        assert_eq!(status_kb(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn reads_this_process() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let s = Sample::read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(s.resident_bytes.unwrap() > 1e6);
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        assert!(s.open_fds.unwrap() >= 3.0);
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap());
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }
}
