//! Facts about this process that its last log line reports.

/// The process's peak resident set size (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// The process's resident set size now (`VmRSS`), on Linux.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// CPU time the process has used so far, its threads' together (user and system).
pub fn cpu_time() -> Option<std::time::Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let micros = |t: libc::timeval| -> Option<u64> {
        Some(u64::try_from(t.tv_sec).ok()? * 1_000_000 + u64::try_from(t.tv_usec).ok()?)
    };
    let total = micros(usage.ru_utime)? + micros(usage.ru_stime)?;
    Some(std::time::Duration::from_micros(total))
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    field_kib(&status, field)
}

fn field_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_at_least_what_is_resident() {
        let held = vec![1u8; 32 << 20];
        let peak = super::peak_rss_bytes().expect("VmHWM on Linux");
        assert!(peak >= 32 << 20, "{peak}");
        let now = super::rss_bytes().expect("VmRSS on Linux");
        assert!(now >= 32 << 20, "{now}");
        // Other tests in this process allocate between two reads, so the two figures are
        // compared within one read of the status file, where the kernel keeps peak >= now.
        let status = std::fs::read_to_string("/proc/self/status").expect("status on Linux");
        let now = super::field_kib(&status, "VmRSS:").expect("VmRSS");
        let peak = super::field_kib(&status, "VmHWM:").expect("VmHWM");
        assert!(now <= peak, "{now} {peak}");
        drop(held);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::cpu_time().expect("getrusage");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        // Spinning keeps a core busy: the process's CPU time must pass 20 ms more.
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let used = super::cpu_time().expect("getrusage") - before;
            if used >= std::time::Duration::from_millis(20) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "10 s of spinning added only {used:?} of CPU time"
            );
        }
    }
}
