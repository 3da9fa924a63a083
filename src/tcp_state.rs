//! The kernel's own view of a socket: its TCP state, read with `getsockopt`.
//!
//! Linux answers `TCP_INFO` (the same numbers `ss -tan` prints), macOS answers
//! `TCP_CONNECTION_INFO`. Elsewhere, or if the call fails, the state is simply unknown and
//! events leave the `tcp_state` field out rather than guess.

use std::os::fd::{AsFd, AsRawFd};

/// The TCP state of `socket` right now, by its RFC 793 name (`ESTABLISHED`, `CLOSE_WAIT`, …).
pub fn of(socket: &impl AsFd) -> Option<&'static str> {
    let code = raw_state(socket.as_fd().as_raw_fd())?;
    state_name(code)
}

/// The state of the connection `local` → `peer` in the kernel's socket table, found even
/// after every descriptor for it is closed (a TIME_WAIT has no descriptor). Linux reads
/// `/proc/net/tcp`, the table `ss -tan` prints; elsewhere it is unknown.
pub fn in_table(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<&'static str> {
    table_state(local, peer).and_then(state_name)
}

#[cfg(target_os = "linux")]
fn table_state(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u8> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    // `  0: 0100007F:1F40 0100007F:D3A2 06 …`: addresses as the kernel's u32 in hex (host
    // byte order), ports in hex, then the state.
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(ip.to_ne_bytes())),
            port,
        ))
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches =
            fields.len() > 3 && parse(fields[1]) == Some(local) && parse(fields[2]) == Some(peer);
        matches
            .then(|| u8::from_str_radix(fields[3], 16).ok())
            .flatten()
    })
}

#[cfg(not(target_os = "linux"))]
fn table_state(_local: std::net::SocketAddr, _peer: std::net::SocketAddr) -> Option<u8> {
    None
}

#[cfg(target_os = "linux")]
fn raw_state(fd: libc::c_int) -> Option<u8> {
    // SAFETY: tcp_info is plain old data; the kernel writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// Linux numbers its states in include/net/tcp_states.h.
#[cfg(target_os = "linux")]
fn state_name(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => return None,
    })
}

#[cfg(target_os = "macos")]
fn raw_state(fd: libc::c_int) -> Option<u8> {
    // SAFETY: tcp_connection_info is plain old data; the kernel writes at most `len` bytes.
    let mut info: libc::tcp_connection_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_connection_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONNECTION_INFO,
            (&mut info as *mut libc::tcp_connection_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// The BSDs number their states in netinet/tcp_fsm.h; names follow Linux's spelling.
#[cfg(target_os = "macos")]
fn state_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "CLOSE",
        1 => "LISTEN",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "ESTABLISHED",
        5 => "CLOSE_WAIT",
        6 => "FIN_WAIT1",
        7 => "CLOSING",
        8 => "LAST_ACK",
        9 => "FIN_WAIT2",
        10 => "TIME_WAIT",
        _ => return None,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn raw_state(_fd: libc::c_int) -> Option<u8> {
    None
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn state_name(_code: u8) -> Option<&'static str> {
    None
}
