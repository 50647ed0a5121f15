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
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Option<std::time::Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the struct it is given.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
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
        let before = super::cpu_time().expect("the process clock");
        let thread_before = super::thread_cpu_time().expect("the thread clock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        // Spinning keeps a core busy: this thread's CPU time must pass 20 ms more.
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            // Read inside the process's interval: this thread's time is part of the process's.
            let thread = super::thread_cpu_time().expect("the thread clock") - thread_before;
            let used = super::cpu_time().expect("the process clock") - before;
            assert!(thread <= used, "{thread:?} of {used:?}");
            if thread >= std::time::Duration::from_millis(20) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "10 s of spinning added only {thread:?} of CPU time"
            );
        }
    }
}
