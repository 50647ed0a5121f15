//! Ranges of local files mapped into memory rather than copied into buffers: the kernel's copy
//! of file pages was 5-9 % of a files → Delta run's samples (docs/benchmarks.md, Local files
//! mapped).
//!
//! A file must not change once listed, but one that shrinks under a mapping would raise
//! `SIGBUS` at the next read of a page past its new end and end the process. A handler takes
//! that fault for the mapped ranges only: the page becomes a page of zeros and the fault is
//! counted. Records read from such a page are wrong, so an epoch that sees the count move
//! fails instead of answering `Prepared` ([`FaultWatch`]); its next run finds the file shorter
//! than planned before mapping it. A fault anywhere else goes to the handler that was there
//! before (Rust's stack-overflow guard, else the default action).

use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;

/// Mapped ranges alive at once, at most: those of the chunks being read and read ahead (dead
/// letters copy their records out). Past it a range is read as before.
const SLOTS: usize = 1024;

/// The address span of one live mapped range; free while `start` is 0.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
}

static RANGES: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }
}; SLOTS];
/// Faults taken in mapped ranges since the process started.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(0);
/// The `SIGBUS` action before ours, to which faults outside mapped ranges go.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The bytes of `range` of `file`, mapped: `None` when it cannot be mapped (the handler could
/// not be installed, the range is empty, the file system does not map files, every slot is
/// taken), and the caller reads it instead. The caller has checked that the file holds the
/// range.
pub fn map(file: &File, range: Range<u64>) -> Option<Bytes> {
    let len = usize::try_from(range.end - range.start).ok()?;
    if len == 0 || !handler_installed() {
        return None;
    }
    // SAFETY: a file of the source is not written while listed; one that shrinks anyway
    // faults into the handler, which maps zeros there and makes the epoch fail.
    let mapped = unsafe {
        memmap2::MmapOptions::new()
            .offset(range.start)
            .len(len)
            .populate()
            .map(file)
    };
    let map = match mapped {
        Ok(map) => map,
        Err(e) => {
            tracing::debug!(error = %e, "a file range could not be mapped: read instead");
            return None;
        }
    };
    let start = map.as_ptr() as usize;
    for (slot, span) in RANGES.iter().enumerate() {
        if span
            .start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            span.end.store(start + len, Ordering::Release);
            return Some(Bytes::from_owner(Mapped { map, slot }));
        }
    }
    tracing::debug!("every mapped range's slot is taken: a file range is read instead");
    None
}

/// A mapped range, registered with the handler while it lives.
struct Mapped {
    map: memmap2::Mmap,
    slot: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    /// Unregisters the span before the mapping goes (the field drops after this): an address
    /// mapped again later must not look like one of ours.
    fn drop(&mut self) {
        let span = &RANGES[self.slot];
        span.end.store(0, Ordering::Release);
        span.start.store(0, Ordering::Release);
    }
}

/// Whether faults in mapped ranges moved since it last looked.
#[derive(Debug, Default)]
pub struct FaultWatch {
    seen: u64,
}

impl FaultWatch {
    /// True when a mapped range faulted since the last call (or since it was made), that is,
    /// a file shrank while it was read and some record may hold zeros instead of its bytes.
    pub fn moved(&mut self) -> bool {
        let now = FAULTS.load(Ordering::Acquire);
        let moved = now != self.seen;
        self.seen = now;
        moved
    }
}

fn handler_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: `sysconf` and `sigaction` with valid pointers; the handler only reads the
        // statics set here before it is installed.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page <= 0 {
                return false;
            }
            PAGE.store(page as usize, Ordering::Release);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return false;
            }
            let _ = PREVIOUS.set(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
        }
    })
}

/// Whether `address` lies in a live mapped range.
fn mapped(address: usize) -> bool {
    RANGES.iter().any(|span| {
        let start = span.start.load(Ordering::Acquire);
        start != 0 && start <= address && address < span.end.load(Ordering::Acquire)
    })
}

/// Only async-signal-safe work: atomics, `mmap`, `sigaction`.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a valid `siginfo_t` to an `SA_SIGINFO` handler.
    let address = unsafe { (*info).si_addr() } as usize;
    if mapped(address) {
        let page = PAGE.load(Ordering::Acquire);
        let at = address & !(page - 1);
        // SAFETY: the page lies in one of our mappings (mappings never share a page); a fixed
        // anonymous mapping replaces it, and the mapping's own unmap removes it with the rest.
        let zeros = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if zeros != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
    forward(signal, info, context);
}

/// Hands a fault that is not ours to the action before ours.
fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.get().map(|p| (p.sa_sigaction, p.sa_flags));
    match previous {
        Some((handler, flags))
            if flags & libc::SA_SIGINFO != 0
                && handler != libc::SIG_DFL
                && handler != libc::SIG_IGN =>
        {
            // SAFETY: an `SA_SIGINFO` action's handler has this signature.
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            handler(signal, info, context);
        }
        Some((handler, _)) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
            // SAFETY: a plain action's handler has this signature.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(signal);
        }
        // The default action: restored, the faulting access runs again and ends the process
        // as it would have without us (an ignored SIGBUS would fault forever).
        _ => {
            // SAFETY: `sigaction` with a zeroed action whose handler is `SIG_DFL`.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(pages: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let page = 4096;
        let bytes: Vec<u8> = (0..pages * page).map(|i| b'a' + (i % 26) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        file.flush().unwrap();
        (file, bytes)
    }

    /// A range maps to the file's bytes, from any offset.
    #[test]
    fn a_range_maps_to_the_files_bytes() {
        let (file, bytes) = file_of(4);
        for range in [0..16_384u64, 100..5_000, 4_096..8_192, 16_383..16_384] {
            let mapped = map(file.as_file(), range.clone()).unwrap();
            assert_eq!(
                &mapped[..],
                &bytes[range.start as usize..range.end as usize]
            );
        }
        assert!(map(file.as_file(), 7..7).is_none());
        // What cannot be mapped is read instead.
        let proc_file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(map(&proc_file, 0..16).is_none());
    }

    /// Runs the ignored test `name` in a child process (a fault is process-wide: counted in
    /// this one, it would fail epochs of other tests running beside it).
    fn in_a_child(name: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("input::mapped::tests::{name}")])
            .args(["--ignored", "--nocapture", "--test-threads", "1"])
            .env("WEIR_TEST_CHILD_FAULT", "1")
            .output()
            .unwrap()
    }

    /// A file cut short under a mapping: the pages past its new end read as zeros, the
    /// process goes on, and the watch sees the fault.
    #[test]
    fn a_file_cut_short_under_a_mapping_reads_zeros_and_is_seen() {
        let out = in_a_child("child_reads_a_file_cut_short");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    #[ignore = "run by a_file_cut_short_under_a_mapping_reads_zeros_and_is_seen"]
    fn child_reads_a_file_cut_short() {
        let (file, bytes) = file_of(4);
        let mut watch = FaultWatch::default();
        let mapped = map(file.as_file(), 10..16_000).unwrap();
        assert!(!watch.moved());
        file.as_file().set_len(4_096).unwrap();
        let read = mapped.to_vec();
        assert_eq!(&read[..4_086], &bytes[10..4_096]);
        assert!(read[4_086..].iter().all(|b| *b == 0));
        assert!(watch.moved());
        assert!(!watch.moved());
    }

    /// A fault outside mapped ranges still ends the process: the child dies of SIGBUS rather
    /// than read zeros.
    #[test]
    fn a_fault_outside_mapped_ranges_still_ends_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let out = in_a_child("child_faults_outside_mapped_ranges");
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    }

    #[test]
    #[ignore = "run by a_fault_outside_mapped_ranges_still_ends_the_process"]
    fn child_faults_outside_mapped_ranges() {
        // Run by hand with `--ignored`, it would end the test process.
        if std::env::var_os("WEIR_TEST_CHILD_FAULT").is_none() {
            return;
        }
        let (file, _) = file_of(4);
        // Our handler is installed by a mapped range of another file.
        let (other, _) = file_of(1);
        let _ours = map(other.as_file(), 0..4_096).unwrap();
        // SAFETY: the test's point is the fault this mapping takes.
        let theirs = unsafe { memmap2::Mmap::map(file.as_file()).unwrap() };
        file.as_file().set_len(0).unwrap();
        let byte = std::hint::black_box(theirs[8_192]);
        println!("read {byte} instead of faulting");
    }
}
