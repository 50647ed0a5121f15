//! Facts about this process that its last log line reports.

/// The process's peak resident set size (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// The process's resident set size now (`VmRSS`), on Linux.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
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
}
