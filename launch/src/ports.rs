//! Ports for node processes: reserved before they start, or checked free.
//!
//! A node is told its HTTP and Raft addresses on the command line, and every node must
//! know every peer's Raft address at spawn, so the ports are chosen before any process
//! runs. Two things can steal a chosen port before the node binds it: another cluster
//! in the same test process (tests run on parallel threads), and an outbound connection
//! that the kernel gives a local port from the ephemeral range. The reserver avoids both:
//! it never hands out a port twice in one process, and it picks ports *below* the
//! kernel's ephemeral range, where outbound connections never land. Each port is held
//! bound until the caller releases it right before spawning the node.
//!
//! Fixed ports (`psubd dev`'s) are not reserved but checked with [`first_taken`], so a
//! taken one is reported before any node starts rather than mistaken for a node.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port the reserver uses; below it live well-known and registered services.
const FIRST_PORT: u16 = 20_000;

/// First ephemeral port when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read
/// (Linux's default range starts here).
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;

/// A port chosen for one node listener, bound by this process until released.
///
/// Invariant: while `listener` is `Some`, no other process can bind the port; once
/// released the port stays in this process's taken set, so a restarted node gets it
/// back and no other cluster in this process is ever given it.
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    listener: Option<TcpListener>,
}

impl ReservedPort {
    /// The reserved port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops holding the port so the node process can bind it. Idempotent.
    pub fn release(&mut self) {
        self.listener = None;
    }
}

/// Ports handed out by this process so far; never shrinks, so a port that a killed
/// node will bind again on restart is not given to another cluster meanwhile.
fn taken() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The first port of the kernel's ephemeral range (outbound connections use ports from
/// there, so reserved ports stay below it).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// Reserves one free port on 127.0.0.1.
///
/// # Panics
///
/// When no port can be bound, which means the machine is out of ports (see
/// [`try_reserve`]).
pub fn reserve() -> ReservedPort {
    try_reserve().expect("reserve a free TCP port on 127.0.0.1")
}

/// Reserves one free port on 127.0.0.1.
///
/// Concurrent test *processes* start scanning at different places (seeded from the pid
/// and the clock), and the held bind keeps them from sharing a port.
///
/// # Errors
///
/// When no port can be bound, which means the machine is out of ports.
pub fn try_reserve() -> io::Result<ReservedPort> {
    let high = ephemeral_low();
    if high <= FIRST_PORT + 100 {
        return reserve_any();
    }
    let span = u32::from(high - FIRST_PORT);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    let mut taken = taken().lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = FIRST_PORT + ((seed.wrapping_add(i)) % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
            taken.insert(port);
            return Ok(ReservedPort {
                port,
                listener: Some(listener),
            });
        }
    }
    drop(taken);
    reserve_any()
}

/// Fallback: let the kernel pick (may lie in the ephemeral range).
fn reserve_any() -> io::Result<ReservedPort> {
    let mut taken = taken().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if taken.insert(port) {
            return Ok(ReservedPort {
                port,
                listener: Some(listener),
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no TCP port on 127.0.0.1 that this process has not handed out already",
    ))
}

/// The first of `ports` that cannot be bound on 127.0.0.1 now, with why. Used before
/// starting nodes on fixed ports: another process answering on one of them could
/// otherwise pass for one of the nodes.
pub fn first_taken(ports: impl IntoIterator<Item = u16>) -> Option<(u16, io::Error)> {
    ports.into_iter().find_map(|port| {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .err()
            .map(|e| (port, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_held() {
        let ports: Vec<ReservedPort> = (0..32).map(|_| reserve()).collect();
        let set: HashSet<u16> = ports.iter().map(|p| p.port()).collect();
        assert_eq!(set.len(), ports.len(), "a port was handed out twice");
        for p in &ports {
            assert!(
                TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.port())).is_err(),
                "port {} is not held while reserved",
                p.port()
            );
        }
    }

    #[test]
    fn released_port_can_be_bound_by_the_node() {
        let mut p = reserve();
        p.release();
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.port()))
            .expect("a released port is free for the node");
    }

    #[test]
    fn first_taken_names_a_held_port() {
        let held = reserve();
        let mut free = reserve();
        free.release();
        assert_eq!(first_taken([free.port()]).map(|(p, _)| p), None);
        assert_eq!(
            first_taken([free.port(), held.port()]).map(|(p, _)| p),
            Some(held.port())
        );
    }
}
