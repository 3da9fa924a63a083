//! The one place that turns a socket call's result into what it means on the wire.
//!
//! A read that returns `Ok(0)` is the peer's FIN; `ECONNRESET` is the peer's RST, reported once,
//! by the first call after it (a read or a write); `EPIPE` is a write into a connection that is
//! already dead (its RST reported already, or one that came while our socket was CLOSE_WAIT).
//! Every server mode and the client go through these functions, so a phenomenon is named the
//! same way everywhere.

use std::io;

/// What a `read()` on a connected socket told us.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Bytes arrived (never 0).
    Data(usize),
    /// `read()` returned 0: the peer's FIN. Nothing more will ever arrive.
    Eof,
    /// `ECONNRESET`: the peer's RST. The connection is gone.
    Reset,
    /// Nothing to read yet: `EAGAIN` on a non-blocking socket, or a read timeout expired.
    WouldBlock,
    /// A signal interrupted the call (`EINTR`): simply try again.
    Interrupted,
    /// Anything else, reported as an `error` event.
    Failed(io::Error),
}

/// What a `write()` on a connected socket told us.
#[derive(Debug)]
pub enum WriteOutcome {
    /// The kernel took this many bytes into its send buffer (maybe fewer than offered).
    Wrote(usize),
    /// `EPIPE`: the connection is dead; writing can never succeed again.
    BrokenPipe,
    /// `ECONNRESET`: the peer's RST arrived before this write. The first call after an RST,
    /// read or write, reports it; writes after that fail `EPIPE`.
    Reset,
    /// The send buffer is full (`EAGAIN`): wait until the socket is writable.
    WouldBlock,
    /// A signal interrupted the call (`EINTR`): simply try again.
    Interrupted,
    /// Anything else, reported as an `error` event.
    Failed(io::Error),
}

pub fn classify_read(result: io::Result<usize>) -> ReadOutcome {
    match result {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(n),
        Err(e) if would_block(&e) => ReadOutcome::WouldBlock,
        Err(e) if interrupted(&e) => ReadOutcome::Interrupted,
        Err(e) if is_reset(&e) => ReadOutcome::Reset,
        Err(e) => ReadOutcome::Failed(e),
    }
}

pub fn classify_write(result: io::Result<usize>) -> WriteOutcome {
    match result {
        Ok(n) => WriteOutcome::Wrote(n),
        Err(e) if would_block(&e) => WriteOutcome::WouldBlock,
        Err(e) if interrupted(&e) => WriteOutcome::Interrupted,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => WriteOutcome::BrokenPipe,
        Err(e) if is_reset(&e) => WriteOutcome::Reset,
        Err(e) => WriteOutcome::Failed(e),
    }
}

/// `EAGAIN`/`EWOULDBLOCK`. A blocking socket with a timeout (SO_RCVTIMEO) reports the same
/// errno when the timeout expires, which std calls `TimedOut` on some platforms.
pub fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `EINTR`: a signal arrived during the call; nothing happened to the socket.
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// The peer's RST: `ECONNRESET` (or `ECONNABORTED`, which accept() returns when a queued
/// connection was reset before we took it).
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// accept() failed because this process (`EMFILE`) or the whole system (`ENFILE`) has no
/// descriptor left for the new socket. The connection stays queued in the kernel.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// The errno's C name, as a learner will find it in man pages (`ECONNRESET`, `EPIPE`, …).
pub fn errno_name(e: &io::Error) -> Option<&'static str> {
    let name = match e.raw_os_error()? {
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EACCES => "EACCES",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn zero_bytes_is_the_peers_fin() {
        assert!(matches!(classify_read(Ok(0)), ReadOutcome::Eof));
        assert!(matches!(classify_read(Ok(5)), ReadOutcome::Data(5)));
    }

    #[test]
    fn errnos_name_the_wire_event() {
        assert!(matches!(
            classify_read(Err(os(libc::ECONNRESET))),
            ReadOutcome::Reset
        ));
        assert!(matches!(
            classify_read(Err(os(libc::EAGAIN))),
            ReadOutcome::WouldBlock
        ));
        assert!(matches!(
            classify_write(Err(os(libc::EPIPE))),
            WriteOutcome::BrokenPipe
        ));
        assert!(matches!(
            classify_write(Err(os(libc::EINTR))),
            WriteOutcome::Interrupted
        ));
        assert_eq!(errno_name(&os(libc::EMFILE)), Some("EMFILE"));
        assert!(out_of_descriptors(&os(libc::ENFILE)));
    }
}
