//! Facts about this process that its last log line reports.

/// The process's peak resident set size (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_at_least_what_is_resident() {
        let held = vec![1u8; 32 << 20];
        let peak = super::peak_rss_bytes().expect("VmHWM on Linux");
        assert!(peak >= 32 << 20, "{peak}");
        drop(held);
    }
}
