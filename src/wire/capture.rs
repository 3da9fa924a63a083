//! The capture itself (Linux): an `AF_PACKET` socket bound to `lo`, the [`filter`] attached
//! in the kernel, and a thread that reads each packet with the kernel's timestamp.
//!
//! The order of the calls matters. A packet socket created with protocol 0 receives nothing;
//! the filter is attached, and only then is the socket bound to `lo` for every protocol, so
//! not one unfiltered packet is ever queued. The thread waits at most [`TICK`] in each
//! `recvmsg` (SO_RCVTIMEO), so it notices the stop flag; it never touches the servers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::filter;

/// How long one `recvmsg` waits before the thread looks at its stop flag.
pub const TICK: Duration = Duration::from_millis(50);

/// The largest frame on `lo` (MTU 65536 plus the Ethernet header), with room to spare.
const FRAME_BUF: usize = 128 * 1024;

/// What the kernel queues for the capture before it drops: enough for a thousand clients'
/// handshakes at once.
const RCVBUF: libc::c_int = 8 << 20;

/// A frame as captured: when the kernel saw it, its bytes, and its length on the wire.
pub struct Frame<'a> {
    pub at_ns: u128,
    pub bytes: &'a [u8],
    pub original: usize,
}

/// An open packet socket on `lo`.
pub struct PacketSocket {
    fd: OwnedFd,
}

fn check(result: libc::c_int, what: &str) -> io::Result<()> {
    if result < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live T and we pass its exact size.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(result, "setsockopt")
}

impl PacketSocket {
    /// socket(AF_PACKET), the filter for `ports`, timestamps, a receive timeout, bind to `lo`.
    /// Without CAP_NET_RAW the first call fails EPERM.
    pub fn open(ports: &[u16]) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let socket = PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        };
        socket.set_filter(ports)?;
        let on: libc::c_int = 1;
        setsockopt(&socket.fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on)?;
        // Beyond net.core.rmem_max only with CAP_NET_ADMIN (root has it); else what is allowed.
        if setsockopt(&socket.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
            let _ = setsockopt(&socket.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
        }
        let tick = libc::timeval {
            tv_sec: 0,
            tv_usec: TICK.as_micros() as libc::suseconds_t,
        };
        setsockopt(&socket.fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tick)?;
        socket.bind_to_loopback()?;
        Ok(socket)
    }

    /// Attach (or replace) the kernel filter: TCP to or from `ports`, arriving copies only.
    pub fn set_filter(&self, ports: &[u16]) -> io::Result<()> {
        let program = filter::program(ports);
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // `filter::Instruction` has the layout of `struct sock_filter`; the kernel copies the
        // program during the call, so `program` only has to outlive it.
        setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
    }

    fn bind_to_loopback(&self) -> io::Result<()> {
        let name = c"lo";
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "this machine has no interface called lo",
            ));
        }
        // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll and we pass its size.
        let result = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(result, "bind to lo")
    }

    /// The next frame, or None when [`TICK`] passed without one. `buf` holds its bytes.
    pub fn next<'a>(&self, buf: &'a mut [u8]) -> io::Result<Option<Frame<'a>>> {
        loop {
            let Some((length, at_ns, outgoing)) = self.receive(buf)? else {
                return Ok(None);
            };
            // The filter already dropped the outgoing copy; skip it here too, for a kernel
            // that would run the filter differently.
            if !outgoing {
                return Ok(Some(Frame {
                    at_ns,
                    bytes: &buf[..length.min(buf.len())],
                    original: length,
                }));
            }
        }
    }

    /// One recvmsg: the frame's real length, its time, and whether it is the outgoing copy.
    fn receive(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u128, bool)>> {
        // SAFETY: all-zero is a valid sockaddr_ll, msghdr and cmsg buffer.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // MSG_TRUNC: the return value is the frame's real length, even if `buf` was short.
        // SAFETY: every pointer in `msg` points at a live buffer of the stated size.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        let at_ns = timestamp(&msg).unwrap_or_else(now_ns);
        Ok(Some((n as usize, at_ns, outgoing)))
    }

    /// Packets the kernel dropped because the capture's queue was full, since the last call.
    pub fn drops(&self) -> u32 {
        // SAFETY: tpacket_stats is plain data; getsockopt writes at most `len` bytes.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        let result = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if result == 0 {
            stats.tp_drops
        } else {
            0
        }
    }
}

/// The kernel's time of the packet (SCM_TIMESTAMPNS: nanoseconds, the realtime clock).
fn timestamp(msg: &libc::msghdr) -> Option<u128> {
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within its length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return Some(ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Read frames until `stop` is set, then what is still queued, handing each to `each`.
/// Returns how many packets the kernel dropped.
pub fn read_until(
    socket: &PacketSocket,
    stop: &Arc<AtomicBool>,
    mut each: impl FnMut(Frame<'_>),
) -> io::Result<u32> {
    let mut buf = vec![0u8; FRAME_BUF];
    let mut drops = 0;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        match socket.next(&mut buf)? {
            Some(frame) => each(frame),
            // Stopping and nothing more queued within a tick: every packet of the run is in.
            None if stopping => break,
            // A quiet tick: a good moment to ask whether the queue overflowed.
            None => drops += socket.drops(),
        }
    }
    Ok(drops + socket.drops())
}
