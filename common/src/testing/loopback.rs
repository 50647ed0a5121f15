//! Loopback ports for servers that must be told their port before they start (a broker that
//! advertises it, a driver its executors are given): `weir bench` and the tests start such
//! servers on 127.0.0.1.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOWEST: u32 = 10_000;

/// A free loopback port, below the kernel's ephemeral range, where binding port 0 and
/// outgoing connections get theirs: a port from that range, found free and closed again, was
/// at times taken by another server's port-0 bind or a connection before the server bound
/// it. No port is handed out twice in one process, whose servers start side by side.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let below = handed_out_below();
    let span = below - LOWEST;
    // Processes started one after the other (test binaries, benches) start at different
    // places.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (start + HANDED_OUT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port from {LOWEST} below {below}"),
    ))
}

/// The port the ports handed out are below: the start of the kernel's ephemeral range (32768
/// unless configured otherwise), leaving at least a thousand.
fn handed_out_below() -> u32 {
    ephemeral_ports_start().max(LOWEST + 1_000)
}

fn ephemeral_ports_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let below = handed_out_below();
        for &port in &ports {
            assert!((LOWEST..below).contains(&u32::from(port)), "{port}");
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len());
    }
}
