//! # `--wire`: the packets themselves, on the same timeline as the calls
//!
//! Every other event in tcp-lab is a socket call and what it returned. With `--wire`, tcp-lab
//! also watches the loopback interface and prints each TCP segment of the run as a `packet`
//! event: its flags (`SYN`, `SYN,ACK`, `PSH,ACK`, `FIN,ACK`, `RST`), its sequence and
//! acknowledgement numbers counted from each side's first (as Wireshark shows them), its
//! payload length and its direction. The time is the kernel's, taken when the packet passed
//! `lo`, on the same clock as the calls: a `write()` and the segment it sent, a segment and the
//! `read()` it woke, interleave as they happened.
//!
//! - [`capture`]: the packet socket and its reading loop (Linux: `AF_PACKET`).
//! - [`filter`]: the kernel-side filter: the run's ports, each packet once.
//! - [`pcap`]: `--pcap FILE`, the same frames for Wireshark or `tcpdump -r`.
//!
//! Capturing needs root or CAP_NET_RAW. Without it, one line says what is missing and how to
//! grant it, and everything else runs as before: the demo's arrows are then inferred from the
//! calls.
//!
//! Lessons: `lessons/00-setup.md` (enabling it), `06-close.md` and `07-resets.md` (what the
//! wire says).

// Elsewhere the capture cannot start, and what only it uses would be reported as unused.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

#[cfg(target_os = "linux")]
mod capture;
pub mod filter;
pub mod pcap;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::cli::WireArgs;
use crate::event::{Event, Kind, Output, OutputArgs, PacketFacts, Role};

/// The command that lets a learner capture without sudo.
pub const SETCAP: &str = "sudo setcap cap_net_raw+ep \"$(command -v tcp-lab)\"";

/// One TCP segment, as the capture saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// When the kernel saw it: nanoseconds since the Unix epoch (the realtime clock).
    pub at_ns: u128,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub flags: Flags,
    /// The sequence number, counted from the sender's first (its SYN is 0).
    pub seq: u32,
    /// The acknowledgement number, counted from the receiver's first; None without ACK.
    pub ack: Option<u32>,
    /// Payload bytes.
    pub len: usize,
}

/// The TCP flags of a segment, as the header holds them (FIN is bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    const NAMES: [(u8, &'static str); 8] = [
        (Flags::FIN, "FIN"),
        (Flags::SYN, "SYN"),
        (Flags::RST, "RST"),
        (Flags::PSH, "PSH"),
        (Flags::ACK, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    /// `SYN,ACK`, `FIN,ACK`, `RST`: the names in the header's bit order, as Wireshark lists them.
    pub fn names(self) -> String {
        let names: Vec<&str> = Flags::NAMES
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, name)| *name)
            .collect();
        names.join(",")
    }
}

/// A TCP segment's header facts, its sequence numbers as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub flags: Flags,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes.
    pub len: usize,
}

/// The TCP segment in an Ethernet frame; None for anything else (ARP, UDP, a cut frame).
pub fn parse(frame: &[u8]) -> Option<Segment> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = packet.transport? else {
        return None;
    };
    Some(Segment {
        from: SocketAddr::new(src, tcp.source_port()),
        to: SocketAddr::new(dst, tcp.destination_port()),
        // The flags are the TCP header's 14th byte.
        flags: Flags(tcp.slice()[13]),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        len: tcp.payload().len(),
    })
}

/// Each direction's first sequence number, to count from it as Wireshark does.
#[derive(Default)]
struct Flows {
    first: HashMap<(SocketAddr, SocketAddr), u32>,
}

/// Directions remembered at most; past it the table starts again (a long `serve --wire`
/// must not grow without bound). A flow first seen mid-way counts from its first segment.
const MAX_FLOWS: usize = 8192;

impl Flows {
    /// The sender's base for this segment: its SYN's number, or one before its first segment.
    fn base(&mut self, from: SocketAddr, to: SocketAddr, seq: u32, syn: bool) -> u32 {
        if self.first.len() >= MAX_FLOWS {
            self.first.clear();
        }
        let guess = if syn { seq } else { seq.wrapping_sub(1) };
        let base = self.first.entry((from, to)).or_insert(guess);
        // A new connection on the same addresses (a restart): its SYN starts the count again.
        if syn {
            *base = seq;
        }
        *base
    }

    /// The segment in `frame`, its numbers counted from each side's first.
    fn packet(&mut self, at_ns: u128, frame: &[u8]) -> Option<Packet> {
        let s = parse(frame)?;
        let base = self.base(s.from, s.to, s.seq, s.flags.has(Flags::SYN));
        let ack = s.flags.has(Flags::ACK).then(|| {
            let theirs = *self
                .first
                .entry((s.to, s.from))
                .or_insert(s.ack.wrapping_sub(1));
            s.ack.wrapping_sub(theirs)
        });
        Some(Packet {
            at_ns,
            from: s.from,
            to: s.to,
            flags: s.flags,
            seq: s.seq.wrapping_sub(base),
            ack,
            len: s.len,
        })
    }
}

/// A packet as an event (kind `packet`), stamped with the kernel's time.
pub fn event(packet: &Packet) -> Event {
    let mut event = Event::new(Kind::Packet);
    event.packet = Some(PacketFacts {
        flags: packet.flags.names(),
        seq: packet.seq,
        ack: packet.ack,
        len: packet.len,
        from: packet.from,
        to: packet.to,
    });
    event.at_ns = Some(packet.at_ns);
    event
}

/// A capture running in its own thread, stopped (its queue drained) when dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    ports: Mutex<Vec<u16>>,
    #[cfg(target_os = "linux")]
    socket: Arc<capture::PacketSocket>,
    thread: Option<JoinHandle<Result<u32>>>,
}

/// What a capture ends with.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Packets the kernel dropped because the capture fell behind (0: the capture is whole).
    pub dropped: u32,
}

/// Start capturing if `args` ask for it: TCP on `lo` to or from `ports` (more with
/// [`Capture::watch`]), each packet handed to `sink` in the capture's thread. None, after one
/// line on stderr that says why, when this process cannot capture.
pub fn start(
    args: &WireArgs,
    ports: &[u16],
    sink: impl FnMut(Packet) + Send + 'static,
) -> Result<Option<Capture>> {
    if !args.wanted() {
        return Ok(None);
    }
    match Capture::start(ports, args.pcap.as_deref(), sink) {
        Ok(capture) => Ok(Some(capture)),
        Err(Start::Unavailable(why)) => {
            eprintln!("tcp-lab: no packet capture: {why}");
            Ok(None)
        }
        Err(Start::Failed(error)) => Err(error),
    }
}

/// `serve --wire`, `client --wire`: start capturing `ports` and print each packet as a
/// `packet` event (role `wire`) on the clock that starts at `epoch_ns`, the command's own.
pub fn print(
    args: &WireArgs,
    ports: &[u16],
    output: &OutputArgs,
    epoch_ns: u128,
) -> Result<Option<Capture>> {
    let out = Output::new(Role::Wire, None, output).since_epoch_ns(epoch_ns);
    start(args, ports, move |packet| out.emit(event(&packet)))
}

/// `serve --wire`: the listening port's packets. The capture watches `lo` only, so a server
/// that listens on more than loopback says once that other machines' packets are not shown.
pub fn print_for_listener(
    args: &WireArgs,
    local: SocketAddr,
    output: &OutputArgs,
    epoch_ns: u128,
) -> Result<Option<Capture>> {
    if args.wanted() && !local.ip().is_loopback() {
        eprintln!(
            "tcp-lab: --wire watches the loopback interface only: packets of clients on other machines are not shown"
        );
    }
    print(args, &[local.port()], output, epoch_ns)
}

/// `client --wire`: the capture watches `lo` only, so a server elsewhere is said once.
pub fn print_for_peer(
    args: &WireArgs,
    peer: SocketAddr,
    output: &OutputArgs,
    epoch_ns: u128,
) -> Result<Option<Capture>> {
    if args.wanted() && !peer.ip().is_loopback() {
        eprintln!(
            "tcp-lab: no packet capture: --wire watches the loopback interface only, and {peer} is not on it"
        );
        return Ok(None);
    }
    print(args, &[peer.port()], output, epoch_ns)
}

/// Why a capture did not start.
enum Start {
    /// This process may not or cannot capture: not an error, the run goes on without it.
    Unavailable(String),
    /// Something the learner asked for failed (the pcap file cannot be written).
    Failed(anyhow::Error),
}

impl Capture {
    #[cfg(target_os = "linux")]
    fn start(
        ports: &[u16],
        pcap_path: Option<&Path>,
        mut sink: impl FnMut(Packet) + Send + 'static,
    ) -> Result<Capture, Start> {
        let socket =
            capture::PacketSocket::open(ports).map_err(|e| Start::Unavailable(unavailable(&e)))?;
        let mut pcap = match pcap_path {
            Some(path) => Some(create_pcap(path).map_err(Start::Failed)?),
            None => None,
        };
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let (reader, stopping) = (Arc::clone(&socket), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut flows = Flows::default();
                let dropped = capture::read_until(&reader, &stopping, |frame| {
                    if let Some(pcap) = pcap.as_mut() {
                        // A full disk must not stop the run: the events still show the packets.
                        let _ = pcap.write(frame.at_ns, frame.bytes, frame.original);
                    }
                    if let Some(packet) = flows.packet(frame.at_ns, frame.bytes) {
                        sink(packet);
                    }
                })
                .context("the packet capture failed")?;
                if let Some(mut pcap) = pcap {
                    pcap.flush().context("cannot finish the pcap file")?;
                }
                Ok(dropped)
            })
            .map_err(|e| {
                Start::Failed(anyhow::Error::new(e).context("cannot start the capture thread"))
            })?;
        Ok(Capture {
            stop,
            ports: Mutex::new(ports.to_vec()),
            socket,
            thread: Some(thread),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn start(
        _ports: &[u16],
        _pcap: Option<&Path>,
        _sink: impl FnMut(Packet) + Send + 'static,
    ) -> Result<Capture, Start> {
        Err(Start::Unavailable(
            "--wire reads packets through a Linux packet socket (AF_PACKET), which this system \
             does not have; the arrows stay inferred from the calls"
                .into(),
        ))
    }

    /// Capture this port's packets too (a server that just started listening).
    pub fn watch(&self, port: u16) {
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if ports.contains(&port) || ports.len() >= filter::MAX_PORTS {
            return;
        }
        ports.push(port);
        #[cfg(target_os = "linux")]
        if let Err(e) = self.socket.set_filter(&ports) {
            eprintln!("tcp-lab: the capture cannot add port {port}: {e}");
        }
    }

    /// Stop reading, once every packet already queued has been read; how it went.
    pub fn stop(&mut self) -> Result<Summary> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(Summary::default());
        };
        let dropped = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
        Ok(Summary { dropped })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        match self.stop() {
            Ok(summary) if summary.dropped > 0 => eprintln!(
                "tcp-lab: the capture missed {} packets (it fell behind): not every packet was shown",
                summary.dropped
            ),
            Ok(_) => {}
            Err(e) => eprintln!("tcp-lab: {e:#}"),
        }
    }
}

fn create_pcap(path: &Path) -> Result<pcap::PcapWriter<BufWriter<File>>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    pcap::PcapWriter::new(BufWriter::new(file))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The one line a learner reads when the capture cannot start: what is missing, and how to
/// grant it.
#[cfg(target_os = "linux")]
fn unavailable(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "--wire needs root or CAP_NET_RAW to open a packet socket, and this process has \
             neither; the run goes on without packets (a demo's arrows are inferred). To allow \
             it: {SETCAP}"
        ),
        _ => format!("cannot open a packet socket on lo ({e}); the run goes on without packets"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame from `src` to `dst`.
    fn frame(src: u16, dst: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .tcp(src, dst, seq, 65535);
        let builder = if flags & Flags::SYN != 0 {
            builder.syn()
        } else {
            builder
        };
        let builder = if flags & Flags::ACK != 0 {
            builder.ack(ack)
        } else {
            builder
        };
        let builder = if flags & Flags::FIN != 0 {
            builder.fin()
        } else {
            builder
        };
        let builder = if flags & Flags::RST != 0 {
            builder.rst()
        } else {
            builder
        };
        let builder = if flags & Flags::PSH != 0 {
            builder.psh()
        } else {
            builder
        };
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn flags_are_named_as_wireshark_lists_them() {
        assert_eq!(Flags(Flags::SYN | Flags::ACK).names(), "SYN,ACK");
        assert_eq!(
            Flags(Flags::FIN | Flags::PSH | Flags::ACK).names(),
            "FIN,PSH,ACK"
        );
        assert_eq!(Flags(Flags::RST).names(), "RST");
    }

    #[test]
    fn sequence_numbers_count_from_each_sides_syn() {
        let mut flows = Flows::default();
        let (c, s) = (40000, 7788);
        let syn = flows
            .packet(1, &frame(c, s, Flags::SYN, 1000, 0, b""))
            .unwrap();
        assert_eq!(
            (syn.flags.names().as_str(), syn.seq, syn.ack),
            ("SYN", 0, None)
        );
        let syn_ack = flows
            .packet(2, &frame(s, c, Flags::SYN | Flags::ACK, 5000, 1001, b""))
            .unwrap();
        assert_eq!((syn_ack.seq, syn_ack.ack), (0, Some(1)));
        let data = flows
            .packet(
                3,
                &frame(c, s, Flags::PSH | Flags::ACK, 1001, 5001, b"hello\n"),
            )
            .unwrap();
        assert_eq!((data.seq, data.ack, data.len), (1, Some(1), 6));
        assert_eq!(data.from, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(data.to, "127.0.0.1:7788".parse().unwrap());
        let fin = flows
            .packet(4, &frame(s, c, Flags::FIN | Flags::ACK, 5001, 1007, b""))
            .unwrap();
        assert_eq!(
            (fin.flags.names().as_str(), fin.seq, fin.ack),
            ("FIN,ACK", 1, Some(7))
        );
    }

    #[test]
    fn anything_but_tcp_is_not_a_packet() {
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .udp(1, 2)
            .write(&mut udp, b"x")
            .unwrap();
        assert!(parse(&udp).is_none());
        assert!(parse(&[0u8; 10]).is_none());
    }
}
