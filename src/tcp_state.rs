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
