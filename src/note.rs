//! The teaching notes: what each event means on the wire and in the kernel.
//!
//! They say exactly what shared/DESIGN.md's kernel table says (Linux, checked with a packet
//! capture). Keeping them in one file keeps the server modes and the client telling the
//! same story, and lets a teacher review every claim tcp-lab makes in one sitting.

pub const LISTEN: &str =
    "listen(): from now on the kernel answers SYNs by itself and queues finished \
handshakes (up to the backlog) until the program calls accept()";

pub const ACCEPT: &str =
    "accept() handed us a connection the kernel had already set up (SYN, SYN-ACK, \
ACK) and queued; the listening socket keeps listening";

pub const CONNECT: &str =
    "connect() returned: the three-way handshake is done. The server's kernel \
completed it, whether or not its program has called accept() yet";

pub const REFUSED: &str =
    "connect() failed ECONNREFUSED: our SYN was answered by an RST, because nothing \
listens on that port";

pub const CONNECT_QUEUED: &str = "connect() returned: the server's kernel completed the handshake \
and queued the connection, though its program never calls accept()";

pub const CONNECT_PENDING: &str = "connect() has not finished: the listener's accept queue is full \
(its backlog), so Linux drops our SYN without an answer. Our kernel resends it after 1 s, 3 s, 7 s … \
and connect() keeps waiting (SYN_SENT)";

pub const RECV: &str =
    "read() returned what had arrived so far: TCP is a byte stream and keeps no \
message boundaries";

pub const SEND: &str = "write() copied the bytes into the kernel's send buffer; that is all a \
successful write means";

pub const EOF: &str =
    "read() returned 0: the peer's FIN. It will send nothing more; our socket is \
CLOSE_WAIT until we close too";

pub const EOF_AFTER_RESET: &str = "read() returned 0, but the socket is CLOSE: the peer's RST \
came, and another call on this socket (the member's writer thread) already got its ECONNRESET, \
which the kernel reports once. Every later read returns 0";

pub const EOF_NAIVE: &str = "read() returned 0: the server's FIN, which may have arrived long ago, \
while we were blocked reading stdin: a blocking client only notices on its next read. A write into \
that closed connection still succeeded (into our kernel); the server's kernel answered it with an RST, \
so the next write fails EPIPE";

pub const CLOSE_FIRST: &str =
    "close(): the kernel sends our FIN and the peer's read returns 0 (EOF). \
We closed first, so the kernel keeps this connection in TIME_WAIT after the descriptor is gone \
(ss -tan state time-wait)";

pub const EOF_AFTER_SHUTDOWN: &str =
    "read() returned 0: the peer's FIN, after ours (shutdown). Both directions are closed; we \
sent the first FIN, so the kernel keeps the connection in TIME_WAIT on our side (ss -tan state \
time-wait), and this socket itself reads CLOSE";

pub const CLOSE_AFTER_SHUTDOWN: &str =
    "close() after shutdown(): our FIN went out already, so nothing new goes on the wire. We sent \
the first FIN, so the kernel keeps this connection in TIME_WAIT after the descriptor is gone";

pub const CLOSE_AFTER_EOF: &str =
    "close() after the peer's FIN: our FIN goes out (LAST_ACK) and the \
connection is over; the peer, which closed first, keeps the TIME_WAIT";

pub const TIME_WAIT_TABLE: &str =
    "the kernel's socket table (/proc/net/tcp, what `ss -tan` reads) \
after close(): the side that closed first keeps the connection in TIME_WAIT, though its descriptor \
is gone";

pub const CLOSE_BYE: &str =
    "the bye word: we close without echoing it. The kernel sends our FIN and \
the peer's read returns 0 (EOF); we closed first, so TIME_WAIT stays on our side";

pub const CLOSE_STOP: &str =
    "stopping: we close the connection, so the kernel sends a FIN and the \
peer's read returns 0 (EOF)";

pub const CLOSE_CRASH: &str =
    "the handler died (--crash-after) without closing anything: the kernel \
closed its socket and sent the FIN. The peer learns nothing of the crash itself";

pub const ABORT: &str =
    "close() with SO_LINGER 0: the kernel sends an RST instead of a FIN and drops \
anything unsent. The peer's next call, read or write, fails ECONNRESET; nobody keeps a TIME_WAIT";

pub const CLOSE_UNREAD: &str = "close() with data still unread in our receive buffer: the kernel \
sends an RST instead of a FIN and discards the data. The peer's next read or write fails ECONNRESET";

/// The note for a close that finds input still unread (FIONREAD > 0): the kernel discards
/// it and sends an RST, not the FIN that `fin_note` describes.
pub fn unread(fin_note: &str) -> &'static str {
    match fin_note {
        n if n == CLOSE_STOP => CLOSE_STOP_UNREAD,
        n if n == CLOSE_BYE => CLOSE_BYE_UNREAD,
        n if n == CLOSE_CRASH => CLOSE_CRASH_UNREAD,
        n if n == TIMEOUT => TIMEOUT_UNREAD,
        n if n == LIMIT => LIMIT_UNREAD,
        n if n == SELECT_LIMIT => SELECT_LIMIT_UNREAD,
        n if n == CLOSE_QUEUED => CLOSE_QUEUED_UNREAD,
        n if n == CHAT_CLOSE_TOO_LONG => CHAT_CLOSE_TOO_LONG_UNREAD,
        n if n == CHAT_QUIT => CHAT_QUIT_UNREAD,
        n if n == TALK_OPERATOR_EOF => TALK_OPERATOR_EOF_UNREAD,
        _ => CLOSE_UNREAD,
    }
}

pub const CLOSE_STOP_UNREAD: &str =
    "stopping: we close the connection, but bytes it sent are still \
unread in our receive buffer, so the kernel discards them and sends an RST instead of a FIN. The \
peer's read fails ECONNRESET";

pub const CLOSE_BYE_UNREAD: &str = "the bye word: we close without echoing it, but more bytes had \
arrived after it, unread, so the kernel discards them and sends an RST instead of a FIN. The peer's \
read fails ECONNRESET";

pub const CLOSE_CRASH_UNREAD: &str =
    "the handler died (--crash-after) without closing anything: the \
kernel closed its socket, and because the peer's bytes were left unread it sent an RST, not a FIN. \
The peer's read fails ECONNRESET";

pub const TIMEOUT_UNREAD: &str = "idle too long (--idle-timeout): nothing moved, because the peer \
sends but never reads and our send buffer stayed full. We close with its bytes unread in our \
receive buffer, so the kernel discards them and sends an RST, not a FIN";

pub const LIMIT_UNREAD: &str =
    "over --max-conns: accepted, told `server full`, and closed at once. \
It had already sent bytes we never read, so the kernel sends an RST instead of a FIN: the peer can \
read `server full`, then its read fails ECONNRESET";

pub const SELECT_LIMIT_UNREAD: &str = "select() cannot watch a descriptor at or above FD_SETSIZE \
(1024), so the connection is told why and closed. It had already sent bytes we never read, so the \
kernel sends an RST instead of a FIN";

pub const CLOSE_QUEUED_UNREAD: &str = "stopping: this connection was complete but still queued \
(never accepted), and its peer had already sent bytes. We accept it only to close it, and with \
those bytes unread the kernel sends an RST, not a FIN: the peer's read fails ECONNRESET";

pub const RESET: &str =
    "ECONNRESET: the peer's RST arrived (it closed with SO_LINGER 0, or with data \
it never read, or we wrote after it was gone). The connection is destroyed at once; the first call \
after an RST, read or write, reports it, and later writes fail EPIPE";

pub const BROKEN_PIPE: &str =
    "write() failed EPIPE: the connection is already dead (its FIN came, and \
our last write was answered with an RST). C and Python die of SIGPIPE here; Rust writes with \
MSG_NOSIGNAL, so it gets the error instead";

pub const SHUTDOWN: &str = "shutdown(Write): our FIN goes out, but the socket stays open for reading \
(FIN_WAIT1, then FIN_WAIT2 once the FIN is acknowledged). The peer reads EOF and may still send; we keep reading";

pub const TIMEOUT: &str = "idle too long (--idle-timeout): we close, the kernel sends our FIN";

pub const LIMIT: &str =
    "over --max-conns: accepted (the kernel had finished the handshake anyway), \
told `server full`, and closed at once with a FIN (bytes it sends after that are answered with an \
RST)";

pub const EMFILE: &str = "accept() failed: no file descriptor left for the new socket. The \
connection stays in the kernel's queue; we back off instead of retrying in a tight loop";

pub const STOP: &str = "Ctrl-C or SIGTERM: stop accepting, close every connection (a FIN, or an \
RST where its bytes were left unread), and print a summary";

pub const SUMMARY: &str = "what this run did";

pub const SPAWN_THREAD: &str = "a new thread serves this connection; the main thread goes back to \
accept(). Threads share descriptors, so the main thread must not close this socket";

pub const EXIT_THREAD: &str = "the handler thread returned after its connection ended";

pub const EXIT_THREAD_PANIC: &str =
    "the handler thread panicked: unwinding dropped its socket, so the \
kernel sent the FIN (an RST, had data been left unread). Only this thread died; the server and its other connections go on";

pub const EXIT_THREAD_PANIC_UNREAD: &str = "the handler thread panicked: unwinding dropped its \
socket with the peer's bytes still unread, so the kernel sent an RST, not a FIN. Only this thread \
died; the server and its other connections go on";

pub const SPAWN_PROCESS: &str = "a child process now serves this connection with the socket it \
inherited. The parent closes its own copy: while any process holds one, the connection stays open \
and the client would never see a FIN";

pub const EXIT_PROCESS: &str = "the child process exited after its connection ended (the parent \
reaps it with waitpid)";

pub const EXIT_PROCESS_CRASH: &str =
    "the child died without closing its socket; the kernel closed \
its descriptors and sent the FIN (an RST, had data been left unread). The parent learns of it from the exit status";

pub const EXIT_PROCESS_CRASH_FIN: &str = "the child died without closing its socket; the kernel \
closed its descriptors and, as nothing was left unread (the child looked as it died), sent the FIN. \
The parent learns of it from the exit status";

pub const EXIT_PROCESS_CRASH_SHARED: &str = "the child died without closing its socket, and the \
kernel closed the child's descriptors; but the parent still holds its own copy of the socket \
(--parent-keeps-fd), so nothing is sent: no FIN, no RST. The peer waits on a connection that \
nobody serves; the parent learns of the crash from the exit status";

pub const EXIT_PROCESS_CRASH_UNREAD: &str = "the child died without closing its socket, with the \
peer's bytes still unread (the child looked as it died and told the parent through the report \
pipe): the kernel closed its descriptors and sent an RST, not a FIN. The peer's read fails \
ECONNRESET";

pub const CLOSE_SHARED: &str = "close() of this process's copy only (--parent-keeps-fd): the parent \
still holds the socket, so the kernel sends nothing yet. The FIN goes out when the last copy is closed";

pub const CLOSE_PARENT_COPY: &str =
    "the parent finally closes the copy it kept (--parent-keeps-fd): \
only now, with no process holding the socket, does the kernel send the FIN";

pub const CLOSE_QUEUED: &str = "stopping: this connection was complete but still queued (never \
accepted). Closing the listener would make the kernel RST it, so we accept it only to close it with \
a FIN";

pub const WOULDBLOCK: &str = "the loop's wasted tries: every accept() and read() that found \
nothing failed with EAGAIN (WouldBlock) at once, and the loop asked again. A blocking or poll \
server would have slept instead";

pub const BIND_TIME_WAIT: &str = "bind() without SO_REUSEADDR failed EADDRINUSE: no server \
listens on the port, but the last run's server closed first, so its side of that connection \
sits in TIME_WAIT (~60 s) and still holds the port";

pub const SELECT_LIMIT: &str = "select() watches descriptors through an fd_set, a bitmap of \
FD_SETSIZE (1024) bits: a descriptor at or above it cannot be put in the set (writing past the \
bitmap is undefined behaviour), so the connection is accepted, told why, and closed. poll and \
epoll have no such wall";

pub const WAIT_ECHO: &str = "we stopped waiting for the echo (--wait): not all we sent has come \
back yet. Giving up sends nothing on the wire; the connection stays open and the client goes on";

pub const WAIT_FIN: &str = "we stopped waiting for the server's FIN (--wait): giving up sends \
nothing on the wire; the client now closes its side as asked";

pub const CONNECT_TIMEOUT: &str = "connect() gave up (--connect-timeout): no SYN-ACK came. A \
listener whose accept queue (backlog) is full drops SYNs without an answer, and our kernel resent \
ours after 1 s, 3 s, …; the socket stayed SYN_SENT. Closing it sends nothing: there was never a \
connection";

pub const CLOSE_CTRL_C: &str = "Ctrl-C: the client exits without calling close(); the kernel \
closes its socket for it and sends our FIN, and the server's read returns 0 (EOF)";

pub const CLOSE_CTRL_C_UNREAD: &str = "Ctrl-C with data still unread in our receive buffer: the \
kernel closes the socket for the exiting client with an RST instead of a FIN and discards the \
data; the server's next read or write fails ECONNRESET";

pub const CLOSE_CTRL_C_AFTER_FIN: &str =
    "Ctrl-C after our FIN already went out: the kernel closes \
the socket for the exiting client and sends nothing new";

pub const EOF_NAIVE_DEMO: &str =
    "read() returned 0: the server's FIN, which had arrived some 300 ms \
earlier, while this naive client sat blocked reading its stdin (a pipe: the demo types each line \
into it, `second` only after the FIN). A blocking client only notices on its next read. The write \
into that closed connection still succeeded (into our kernel); the server's kernel answered it \
with an RST, so the next write fails EPIPE";

pub const CLOSE_LISTENER: &str = "close() of the listening socket (--close-listener-after): the \
connections already accepted are sockets of their own and go on being served; the port has no \
listener now, so a new client's SYN is answered by an RST (ECONNREFUSED), and a connection still \
queued, never accepted, is reset";

pub const CLOSE_LISTENER_EXIT: &str = "--exit-after: no later connection will be served, so we \
close the listening socket now instead of at exit. A client that connects from now on is refused \
at once (its SYN answered by an RST: ECONNREFUSED) instead of waiting in the backlog to be reset \
(ECONNRESET) when we exit; the connections already accepted go on";

pub const CLOSE_SHARED_THREAD: &str = "close() in the main thread, as a process-model parent \
closes its copy. But threads share one descriptor table: there is no other copy, so this closes \
the handler's socket too, and the kernel sends the FIN";

pub const EBADF_SHARED_THREAD: &str = "recv() in the handler thread failed EBADF: the number it \
was given names nothing any more, because another thread closed it. Worse, a later accept() may \
reuse that number, and the handler would read a stranger's connection: threads must not close \
what they share";

pub const CHAT_JOIN: &str = "a member entered a room: the others there were told `* NICK joined`";

pub const CHAT_LEAVE: &str = "a member left a room: the others there were told, with the reason";

pub const CHAT_NICK: &str =
    "a member changed its nick; nicks are unique, so the old one is free again";

pub const CHAT_RELAY: &str = "one line, framed out of the byte stream at its newline, copied into \
the queue of every other member of the room; each queue is written when its socket can take it";

pub const CHAT_DROPPED: &str =
    "more than 64 KiB of text waited for this member: it is not reading. \
Keeping it would let one slow reader grow the server's memory without bound (or, with blocking \
writes, stall everyone who talks to it), so it is dropped and its room told";

pub const CHAT_ABORT_DROPPED: &str = "close() with SO_LINGER 0: the kernel discards the bytes it \
still held for this peer and sends an RST, instead of trying for minutes to deliver them; the \
peer's reads fail ECONNRESET once the RST arrives";

pub const CHAT_TOO_LONG: &str = "no newline within --max-line bytes: a line can only be held \
whole, so holding more would let one peer grow our memory without bound. It is told why, and closed";

pub const CHAT_CLOSE_TOO_LONG: &str = "close() after the refusal went out: the rest of the \
over-long line was read and thrown away first, so nothing is left unread and the kernel sends our \
FIN: the peer reads the refusal, then EOF";

pub const CHAT_CLOSE_TOO_LONG_UNREAD: &str = "close() after the refusal went out, but the \
over-long line kept coming faster than we read and threw it away (we stop after 256 KiB): bytes \
were still unread, so the kernel discards them and sends an RST, not a FIN. The peer's read fails \
ECONNRESET, and may lose the refusal it had not read yet";

pub const CHAT_QUIT: &str = "/quit: the server closes first. Anything sent after it was read and \
thrown away, so the kernel sends our FIN (not an RST), and this side ends in TIME_WAIT";

pub const TALK_RECV: &str = "the client's words: read() returned what had arrived. In half-duplex \
(blocking) the server now waits for its operator, and reads nothing more until the reply is sent";

pub const CHAT_QUIT_UNREAD: &str = "/quit: the server closes first, but more bytes came after it \
than we read and threw away: with them unread the kernel sends an RST, not a FIN, and the peer's \
read fails ECONNRESET";

pub const TALK_OPERATOR_EOF: &str = "the operator ended its input (Ctrl-D): we close, the kernel \
sends our FIN, and the server stops: there is nobody left to talk";

pub const TALK_OPERATOR_EOF_UNREAD: &str = "the operator ended its input (Ctrl-D): we close, and \
the server stops. The client's last words were still unread in our receive buffer, so the kernel \
discards them and sends an RST, not a FIN: the client's read fails ECONNRESET";
