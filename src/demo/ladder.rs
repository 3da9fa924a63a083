//! The timeline as a TCP textbook draws it: a ladder (sequence) diagram.
//!
//! ```text
//!    time               client │                    │ server
//!   0.004                      │─── SYN ───────────▶│
//!                              │◀── SYN-ACK ────────│
//!                              │─── ACK ───────────▶│
//!   0.004        connect() = 0 │                    │
//!                [ESTABLISHED] │                    │
//!   0.005      write() = 6 "hi │─── 6 bytes ───────▶│
//! ```
//!
//! The client's calls are on the left, the server's on the right, what crossed the wire in
//! between, and time goes down. The handshake is drawn from `connect`/`accept`; a FIN from a
//! `close` or `shutdown` (or, when the sender printed nothing, from the `eof` it caused); an
//! RST from an `abort`, a close with unread data, or data sent into a socket nobody holds.
//! Each note is printed once, under the first event that carries it. Everything fits in 80
//! columns and reads the same without colour.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use colored::{ColoredString, Colorize};
use serde_json::Value;

use super::{conn, conn_keys, CLIENT, SERVER};
use crate::event::{self, Kind};
use crate::note;

/// Column widths: time, the client's text, the wire, the server's text (80 in all).
const TIME: usize = 7;
const LEFT: usize = 22;
const WIRE: usize = 20;
const RIGHT: usize = 27;
/// Notes are indented under the time column.
const NOTE_INDENT: usize = 9;
const WIDTH: usize = TIME + 1 + LEFT + 1 + WIRE + 1 + 1 + RIGHT;

/// Beyond this many connections, only the first two and the last are drawn.
const MAX_DRAWN: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn of(e: &Value) -> Side {
        if e["role"] == CLIENT {
            Side::Client
        } else {
            Side::Server
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// What crossed the wire on one row, and from which side.
#[derive(Clone, Copy)]
enum Packet {
    Syn,
    SynAck,
    Ack,
    Fin,
    Rst,
    Data(u64),
    /// A SYN that the server's kernel dropped.
    SynDropped,
    /// Nothing crossed the wire, and that is the point.
    Nothing,
}

impl Packet {
    fn label(self) -> String {
        match self {
            Packet::Syn | Packet::SynDropped => "SYN".into(),
            Packet::Nothing => "no FIN yet".into(),
            Packet::SynAck => "SYN-ACK".into(),
            Packet::Ack => "ACK".into(),
            Packet::Fin => "FIN".into(),
            Packet::Rst => "RST".into(),
            Packet::Data(1) => "1 byte".into(),
            Packet::Data(n) => format!("{n} bytes"),
        }
    }

    fn paint(self, text: &str) -> ColoredString {
        match self {
            Packet::Syn | Packet::SynAck | Packet::Ack => text.green(),
            Packet::Fin => text.yellow(),
            Packet::Rst | Packet::SynDropped => text.red(),
            Packet::Data(_) => text.normal(),
            Packet::Nothing => text.dimmed(),
        }
    }
}

/// The wire column of a row: an arrow from `from`, or nothing.
fn wire(packet: Option<(Packet, Side)>) -> String {
    let Some((packet, from)) = packet else {
        return " ".repeat(WIRE);
    };
    let inner = format!(" {} ", packet.label());
    let len = inner.chars().count();
    let arrow = match (packet, from) {
        (Packet::Nothing, _) => {
            let pad = WIRE.saturating_sub(len + 2);
            return format!("  {}{}", packet.paint(&inner), " ".repeat(pad));
        }
        (Packet::SynDropped, _) => {
            let line = format!("──{inner}──✗");
            let pad = WIRE.saturating_sub(len + 5);
            return format!("{}{}", packet.paint(&line), " ".repeat(pad));
        }
        (_, Side::Client) => {
            format!("──{inner}{}▶", "─".repeat(WIRE.saturating_sub(len + 3)))
        }
        (_, Side::Server) => {
            format!("◀{}{inner}──", "─".repeat(WIRE.saturating_sub(len + 3)))
        }
    };
    packet.paint(&arrow).to_string()
}

/// The wire column of a captured packet: its flags on an arrow from `from`, coloured as the
/// inferred arrows are (RST red, FIN yellow, SYN green, the rest plain).
fn captured_wire(flags: &str, from: Side) -> String {
    let inner = format!(" {flags} ");
    let len = inner.chars().count();
    let line = "─".repeat(WIRE.saturating_sub(len + 3));
    let arrow = match from {
        Side::Client => format!("──{inner}{line}▶"),
        Side::Server => format!("◀{line}{inner}──"),
    };
    let has = |flag: &str| flags.split(',').any(|f| f == flag);
    if has("RST") {
        arrow.red().to_string()
    } else if has("FIN") {
        arrow.yellow().to_string()
    } else if has("SYN") {
        arrow.green().to_string()
    } else {
        arrow
    }
}

/// How the demo's arrows were made, said in the header when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrows {
    /// From the calls (the default; the header says nothing).
    Inferred,
    /// From the calls, because `--wire` could not capture: the header says so.
    InferredNoCapture,
    /// The packets captured on `lo` (`--wire`): one arrow per packet, none inferred.
    Captured,
}

/// A piece of a side's text and how it is coloured.
struct Piece {
    text: String,
    style: Style,
}

#[derive(Clone, Copy)]
enum Style {
    Plain,
    Label(Kind),
    State,
    Dim,
}

impl Piece {
    fn new(text: impl Into<String>, style: Style) -> Piece {
        Piece {
            text: text.into(),
            style,
        }
    }

    fn width(&self) -> usize {
        self.text.chars().count()
    }

    fn painted(&self) -> String {
        match self.style {
            Style::Plain => self.text.clone(),
            Style::Label(kind) => kind.paint(&self.text).to_string(),
            Style::State => self.text.cyan().to_string(),
            Style::Dim => self.text.dimmed().to_string(),
        }
    }
}

/// Pack pieces into lines of at most `width` columns (a piece too long is cut).
fn pack(pieces: Vec<Piece>, width: usize) -> Vec<Vec<Piece>> {
    let mut lines: Vec<Vec<Piece>> = Vec::new();
    let mut used = 0;
    for mut piece in pieces {
        if piece.width() > width {
            let cut: String = piece.text.chars().take(width - 1).collect();
            piece.text = format!("{cut}…");
        }
        match lines.last_mut() {
            Some(line) if used + 1 + piece.width() <= width => {
                used += 1 + piece.width();
                line.push(piece);
            }
            _ => {
                used = piece.width();
                lines.push(vec![piece]);
            }
        }
    }
    lines
}

fn joined(line: &[Piece]) -> (String, usize) {
    let width = line.iter().map(|p| p.width()).sum::<usize>() + line.len().saturating_sub(1);
    let text: Vec<String> = line.iter().map(Piece::painted).collect();
    (text.join(" "), width)
}

/// One row or more: the time, the client's text, the wire, the server's text. Text too long
/// for its column continues on the next rows, beside an empty wire.
fn rows(out: &mut String, time: Option<f64>, side: Side, pieces: Vec<Piece>, first_wire: String) {
    let width = match side {
        Side::Client => LEFT,
        Side::Server => RIGHT,
    };
    let mut lines = pack(pieces, width);
    if lines.is_empty() {
        lines.push(Vec::new());
    }
    for (i, line) in lines.iter().enumerate() {
        let time = match (i, time) {
            (0, Some(t)) => format!("{t:>TIME$.3}"),
            _ => " ".repeat(TIME),
        };
        let wire = if i == 0 {
            first_wire.clone()
        } else {
            wire(None)
        };
        let (text, used) = joined(line);
        let bar = "│".dimmed();
        match side {
            Side::Client => {
                let pad = " ".repeat(LEFT.saturating_sub(used));
                let _ = writeln!(out, "{} {pad}{text}{bar}{wire}{bar}", time.dimmed());
            }
            Side::Server => {
                let pad = " ".repeat(LEFT);
                let line = format!("{} {pad}{bar}{wire}{bar} {text}", time.dimmed());
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
}

/// An arrow with no call beside it (the kernel's own packets: handshake, RSTs).
fn wire_row(out: &mut String, packet: Packet, from: Side, text: Option<&str>) {
    let pieces: Vec<Piece> = text
        .map(|t| Piece::new(t, Style::Dim))
        .into_iter()
        .collect();
    rows(out, None, from, pieces, wire(Some((packet, from))));
}

fn note_rows(out: &mut String, note: &str) {
    for (i, line) in event::wrap(note, WIDTH - NOTE_INDENT - 2).enumerate() {
        let arrow = if i == 0 { "↳" } else { " " };
        let _ = writeln!(
            out,
            "{:NOTE_INDENT$}{} {}",
            "",
            arrow.dimmed(),
            line.dimmed().italic()
        );
    }
}

/// A connection's state in the drawing so far.
#[derive(Default)]
struct Drawn {
    handshake: bool,
    /// Each side's FIN or RST has been drawn.
    fin: [bool; 2],
    rst: [bool; 2],
    /// Each side has let go of the socket: data sent to it now meets an RST.
    gone: [bool; 2],
}

fn ix(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Draw the whole timeline; with [`Arrows::Captured`], the `packet` events are the arrows.
pub fn render(events: &[Value], explain: bool, arrows: Arrows) -> String {
    let captured = arrows == Arrows::Captured;
    let servers = server_ports(events);
    let keys = conn_keys(events);
    let labels = conn_labels(events, &keys);
    let many = labels.len() > 1;
    let shown = drawn_keys(&keys);
    let elided = labels.len().saturating_sub(shown.len());

    let mut out = String::new();
    let legend = match arrows {
        Arrows::Inferred => "",
        Arrows::InferredNoCapture => "(arrows inferred)",
        Arrows::Captured => "packets on lo",
    };
    let _ = writeln!(
        out,
        "{:>TIME$} {:>LEFT$} {:^WIRE$}  {}",
        "time".dimmed(),
        "client".bold(),
        legend.dimmed(),
        "server".bold()
    );
    let mut drawn: HashMap<&str, Drawn> = HashMap::new();
    let mut notes: HashSet<&str> = HashSet::new();
    let mut told_elision = false;

    for (e, key) in events.iter().zip(&keys) {
        if e["kind"] == "packet" {
            if captured {
                packet_row(&mut out, e, &servers, &labels, &shown, many);
            }
            continue;
        }
        if key.as_deref().is_some_and(|k| !shown.contains(k)) {
            if !told_elision {
                told_elision = true;
                let line = format!(
                    "  … {elided} more connections, the same steps (all of them: --format json) …"
                );
                let _ = writeln!(out, "{}", line.dimmed());
            }
            continue;
        }
        // A demo's server told `--exit-after` closes its listener once its last connection
        // is in: that is how the demo ends, not what it shows, and it puts nothing on the
        // wire of the connections drawn (`--format json` has the event).
        if e["note"] == note::CLOSE_LISTENER_EXIT {
            continue;
        }
        let side = Side::of(e);
        let kind = kind_of(e);
        let time = e["ts"].as_f64();
        let note = e["note"].as_str().unwrap_or("");
        let mut pieces = Vec::new();
        if let Some(label) = key.as_deref().and_then(|k| labels.get(k)).filter(|_| many) {
            pieces.push(Piece::new(format!("#{label}"), Style::Dim));
        }
        pieces.extend(call(e, kind, many));
        if let Some(state) = e["tcp_state"].as_str() {
            pieces.push(Piece::new(format!("[{state}]"), Style::State));
        }

        let mut none = Drawn::default();
        let d = match key.as_deref() {
            Some(k) => drawn.entry(k).or_default(),
            None => &mut none,
        };
        let me = ix(side);
        let them = ix(side.other());
        let mut packet = None;
        match kind {
            Kind::Connect if e["errno"] == "EINPROGRESS" => {
                packet = Some((Packet::SynDropped, Side::Client));
            }
            // With a capture the packets draw themselves: nothing is inferred.
            _ if captured => {}
            Kind::Connect | Kind::Accept if !d.handshake => {
                d.handshake = true;
                wire_row(&mut out, Packet::Syn, Side::Client, None);
                wire_row(&mut out, Packet::SynAck, Side::Server, None);
                wire_row(&mut out, Packet::Ack, Side::Client, None);
            }
            Kind::Refused => {
                wire_row(&mut out, Packet::Syn, Side::Client, None);
                packet = Some((Packet::Rst, Side::Server));
            }
            Kind::Send => {
                packet = Some((Packet::Data(e["bytes"].as_u64().unwrap_or(0)), side));
            }
            Kind::Shutdown => {
                d.fin[me] = true;
                packet = Some((Packet::Fin, side));
            }
            Kind::Close if note == note::CLOSE_SHARED => packet = Some((Packet::Nothing, side)),
            // An RST went out: SO_LINGER 0, or a close with bytes left unread.
            _ if sends_rst(kind, note, e) => {
                (d.rst[me], d.gone[me]) = (true, true);
                packet = Some((Packet::Rst, side));
            }
            // A client's timeout only gave up waiting (--wait, --connect-timeout): no packet.
            Kind::Timeout if side == Side::Client => {}
            // The listening socket: nothing crosses the wire until a newcomer's SYN.
            Kind::Close if is_listener_close(note) => {}
            Kind::Close | Kind::Timeout | Kind::Limit => {
                d.gone[me] = true;
                if !d.fin[me] && !d.rst[me] {
                    d.fin[me] = true;
                    packet = Some((Packet::Fin, side));
                }
            }
            Kind::Exit if note == note::EXIT_PROCESS_CRASH || note == note::EXIT_THREAD_PANIC => {
                d.gone[me] = true;
                if !d.fin[me] && !d.rst[me] {
                    d.fin[me] = true;
                    packet = Some((Packet::Fin, side));
                }
            }
            // The sender printed nothing when its FIN or RST left: draw it as it arrives.
            Kind::Eof if !d.fin[them] => {
                d.fin[them] = true;
                packet = Some((Packet::Fin, side.other()));
            }
            Kind::Reset if !d.rst[them] => {
                d.rst[them] = true;
                packet = Some((Packet::Rst, side.other()));
            }
            _ => {}
        }
        let answered_by_rst = !captured && kind == Kind::Send && d.gone[them] && !d.rst[them];
        if answered_by_rst {
            d.rst[them] = true;
        }

        if is_wide(e, kind) {
            wide_row(&mut out, time, e, kind);
        } else {
            rows(&mut out, time, side, pieces, wire(packet));
        }
        if answered_by_rst {
            wire_row(
                &mut out,
                Packet::Rst,
                side.other(),
                Some("kernel: no socket"),
            );
        }
        if explain && !note.is_empty() && notes.insert(note) {
            note_rows(&mut out, note);
        }
    }
    out
}

/// The ports servers listen on (and clients connect to): a packet to one of them goes from
/// the client's side.
pub(super) fn server_ports(events: &[Value]) -> HashSet<u16> {
    let mut ports = HashSet::new();
    for e in events {
        let addr = match (e["role"].as_str(), e["kind"].as_str()) {
            (Some(SERVER), Some("listen")) => &e["local"],
            (Some(CLIENT), _) => &e["peer"],
            _ => continue,
        };
        ports.extend(super::port_of(addr));
    }
    ports
}

/// One captured packet: its time, its numbers on the sender's side, its flags on the arrow.
fn packet_row(
    out: &mut String,
    e: &Value,
    servers: &HashSet<u16>,
    labels: &HashMap<&str, u64>,
    shown: &HashSet<String>,
    many: bool,
) {
    let (from, to) = (
        e["from"].as_str().unwrap_or(""),
        e["to"].as_str().unwrap_or(""),
    );
    let to_server = super::port_of(&e["to"]).is_some_and(|p| servers.contains(&p));
    let (side, client) = if to_server {
        (Side::Client, from)
    } else {
        (Side::Server, to)
    };
    if labels.contains_key(client) && !shown.contains(client) {
        return;
    }
    let mut pieces = Vec::new();
    if let Some(label) = labels.get(client).filter(|_| many) {
        pieces.push(Piece::new(format!("#{label}"), Style::Dim));
    }
    pieces.push(Piece::new(format!("seq={}", e["seq"]), Style::Dim));
    if let Some(ack) = e["ack"].as_u64() {
        pieces.push(Piece::new(format!("ack={ack}"), Style::Dim));
    }
    if let Some(len) = e["len"].as_u64().filter(|&n| n > 0) {
        pieces.push(Piece::new(format!("len={len}"), Style::Dim));
    }
    let flags = e["flags"].as_str().unwrap_or("?");
    rows(
        out,
        e["ts"].as_f64(),
        side,
        pieces,
        captured_wire(flags, side),
    );
}

fn kind_of(e: &Value) -> Kind {
    const KINDS: [Kind; 25] = [
        Kind::Listen,
        Kind::Accept,
        Kind::Connect,
        Kind::Refused,
        Kind::Recv,
        Kind::Send,
        Kind::Eof,
        Kind::Shutdown,
        Kind::Close,
        Kind::Abort,
        Kind::Reset,
        Kind::BrokenPipe,
        Kind::Timeout,
        Kind::Limit,
        Kind::Spawn,
        Kind::Exit,
        Kind::WouldBlock,
        Kind::Error,
        Kind::Stop,
        Kind::Summary,
        Kind::Join,
        Kind::Leave,
        Kind::Nick,
        Kind::Relay,
        Kind::Packet,
    ];
    let name = e["kind"].as_str().unwrap_or("");
    KINDS
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or(Kind::Error)
}

/// Events drawn across the whole width instead of in a column: a summary of counters.
fn is_wide(e: &Value, kind: Kind) -> bool {
    kind == Kind::Summary && e.get("stats").is_some()
}

fn wide_row(out: &mut String, time: Option<f64>, e: &Value, kind: Kind) {
    let who = e["role"].as_str().unwrap_or("");
    let mut facts = Vec::new();
    if let Some(stats) = e["stats"].as_object() {
        for (name, value) in stats {
            facts.push(format!("{}={value}", name.replace('_', " ")));
        }
    }
    let time = time.map_or(" ".repeat(TIME), |t| format!("{t:>TIME$.3}"));
    let head = format!("{} {who} {}", time.dimmed(), kind.paint(kind.name()));
    let indent = TIME + 1 + who.len() + 1 + kind.name().len() + 1;
    let mut line = head;
    let mut used = indent - 1;
    for fact in facts {
        if used + 2 + fact.len() > WIDTH {
            let _ = writeln!(out, "{line}");
            line = " ".repeat(indent - 2);
            used = indent - 2;
        }
        line.push_str("  ");
        line.push_str(&fact);
        used += 2 + fact.len();
    }
    let _ = writeln!(out, "{line}");
}

/// What a side did, as the call and its result: `read() = 0`, `write() = EPIPE`.
fn call(e: &Value, kind: Kind, many: bool) -> Vec<Piece> {
    let label = |text: &str| Piece::new(text, Style::Label(kind));
    let plain = |text: String| Piece::new(text, Style::Plain);
    let detail = e["detail"].as_str().unwrap_or("");
    let errno = e["errno"].as_str().unwrap_or("");
    let bytes = e["bytes"].as_u64().unwrap_or(0);
    let mut pieces = match kind {
        Kind::Listen => vec![
            label("listen()"),
            plain(e["local"].as_str().unwrap_or("").to_string()),
        ],
        Kind::Accept if many => vec![label("accept()")],
        Kind::Accept => vec![
            label("accept()"),
            plain(format!("= #{}", conn(e).unwrap_or(0))),
        ],
        Kind::Connect if errno.is_empty() => vec![label("connect() = 0")],
        Kind::Connect | Kind::Refused => vec![label("connect()"), plain(format!("= {errno}"))],
        Kind::Recv => vec![label("read()"), plain(format!("= {bytes}"))],
        Kind::Send => vec![label("write()"), plain(format!("= {bytes}"))],
        Kind::Eof => vec![label("read() = 0"), Piece::new("EOF", Style::Dim)],
        Kind::Shutdown => vec![label("shutdown(Write)")],
        Kind::Close if is_listener_close(e["note"].as_str().unwrap_or("")) => {
            vec![label("close()"), plain("listener".into())]
        }
        Kind::Close => vec![label("close()")],
        Kind::Abort => vec![label("close()"), plain("SO_LINGER 0".into())],
        Kind::Reset => {
            let call = detail.strip_suffix(" failed").unwrap_or("read()");
            vec![label(call), plain(format!("= {errno}"))]
        }
        Kind::BrokenPipe => vec![label("write()"), plain(format!("= {errno}"))],
        Kind::Timeout if e["role"] == "client" => vec![label("gave up waiting")],
        Kind::Timeout => vec![label("idle: close()")],
        Kind::Limit => vec![label("full: close()")],
        Kind::Spawn => vec![label("spawn")],
        Kind::Exit => vec![label("exit")],
        Kind::WouldBlock => vec![label("WouldBlock")],
        Kind::Error => vec![label("error"), plain(errno.to_string())],
        // Every stop in a demo is the demo's doing: it sends the server SIGINT.
        Kind::Stop => vec![label("SIGINT from the demo: stop")],
        Kind::Summary => vec![label("kernel's socket table")],
        // Chat: what the rooms did with a line or a member.
        Kind::Join | Kind::Leave => vec![
            label(kind.name()),
            plain(format!("{} #{}", text(e, "nick"), text(e, "room"))),
        ],
        Kind::Nick => vec![
            label("nick"),
            plain(format!("{} → {}", text(e, "from"), text(e, "nick"))),
        ],
        Kind::Relay => vec![
            label("relay"),
            plain(format!("<{}> to {}", text(e, "from"), e["to"])),
        ],
        Kind::Packet => vec![label("packet")],
    };
    if let Some(data) = e["data"].as_str() {
        let shown: String = data.chars().take(14).collect();
        let more = if shown.len() < data.len() { "…" } else { "" };
        pieces.push(Piece::new(format!("\"{shown}\"{more}"), Style::Dim));
    }
    let detail_is_new = !matches!(kind, Kind::Reset | Kind::Listen)
        && !is_listener_close(e["note"].as_str().unwrap_or(""));
    if !detail.is_empty() && detail_is_new {
        // Word by word, so a long detail wraps instead of being cut.
        let words = format!("({detail})");
        pieces.extend(words.split(' ').map(|w| Piece::new(w, Style::Dim)));
    }
    pieces
}

/// Did this event's call make the kernel send an RST? An abort (SO_LINGER 0) always; a close
/// when it left bytes unread, as its note or its `unread` field says.
fn sends_rst(kind: Kind, note: &str, e: &Value) -> bool {
    match kind {
        Kind::Abort => true,
        Kind::Close => note == note::CLOSE_UNREAD || note == note::CLOSE_CTRL_C_UNREAD,
        Kind::Timeout | Kind::Limit | Kind::Exit => e["unread"].is_u64(),
        _ => false,
    }
}

/// The close of a listening socket (`--close-listener-after`, `--exit-after`).
fn is_listener_close(note: &str) -> bool {
    note == note::CLOSE_LISTENER || note == note::CLOSE_LISTENER_EXIT
}

/// A string field of an event, or nothing.
fn text<'a>(e: &'a Value, field: &str) -> &'a str {
    e[field].as_str().unwrap_or("")
}

/// Number the connections: the server's own numbers, and the next free ones for clients the
/// server never accepted.
fn conn_labels<'a>(events: &[Value], keys: &'a [Option<String>]) -> HashMap<&'a str, u64> {
    let mut labels: HashMap<&str, u64> = HashMap::new();
    for (e, key) in events.iter().zip(keys) {
        if let (Some(key), Some(id), true) = (key, conn(e), e["role"] == SERVER) {
            labels.entry(key.as_str()).or_insert(id);
        }
    }
    let mut next = labels.values().max().copied().unwrap_or(0);
    for key in keys.iter().flatten() {
        labels.entry(key.as_str()).or_insert_with(|| {
            next += 1;
            next
        });
    }
    labels
}

/// The connections drawn: all of them, or the first two and the last when there are many.
fn drawn_keys(keys: &[Option<String>]) -> HashSet<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for key in keys.iter().flatten() {
        if seen.insert(key.as_str()) {
            order.push(key);
        }
    }
    if order.len() > MAX_DRAWN {
        let last = order[order.len() - 1];
        order.truncate(2);
        order.push(last);
    }
    order.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widths(text: &str) -> Vec<usize> {
        text.lines().map(|l| l.chars().count()).collect()
    }

    #[test]
    fn every_row_fits_80_columns_whatever_the_text() {
        let long = "x".repeat(300);
        let note = "a note that goes on and on ".repeat(12);
        let mut events = vec![json!({"ts": 0.0, "role": "server", "kind": "listen",
            "local": "127.0.0.1:65535", "tcp_state": "LISTEN", "detail": "backlog 128"})];
        for i in 1..=6 {
            let client = format!("127.0.0.1:{}", 40000 + i);
            events.push(json!({"ts": 0.1, "role": "client", "kind": "connect",
                "local": client, "tcp_state": "ESTABLISHED", "note": note}));
            events.push(
                json!({"ts": 0.2, "role": "server", "conn": i, "kind": "accept",
                "peer": client, "tcp_state": "ESTABLISHED"}),
            );
            events.push(
                json!({"ts": 0.3, "role": "client", "kind": "send", "local": client,
                "bytes": 300, "data": long, "tcp_state": "ESTABLISHED"}),
            );
            events.push(
                json!({"ts": 0.4, "role": "server", "conn": i, "kind": "exit",
                "detail": format!("a very long detail {long}")}),
            );
        }
        events.push(json!({"ts": 0.5, "role": "server", "kind": "summary",
            "stats": {"connections": 6, "loop_iterations": 123456789, "wouldblock": 987654321,
                      "cpu_ms": 1000, "bytes_echoed": 1800, "turned_away": 0}}));
        let text = render(&events, true, Arrows::Inferred);
        assert!(widths(&text).iter().all(|&w| w <= WIDTH), "{text}");
        assert!(text.contains("… 3 more connections"), "{text}");
    }

    /// The arrows drawn between the two columns, top to bottom.
    fn arrows_of(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.split('│').nth(1))
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect()
    }

    #[test]
    fn arrows_point_from_the_side_that_sent() {
        let events = vec![
            json!({"ts": 0.1, "role": "client", "kind": "connect", "local": "c"}),
            json!({"ts": 0.2, "role": "server", "conn": 1, "kind": "close", "peer": "c"}),
            json!({"ts": 0.3, "role": "client", "kind": "send", "local": "c", "bytes": 2}),
            json!({"ts": 0.4, "role": "client", "kind": "eof", "local": "c"}),
        ];
        let text = render(&events, false, Arrows::Inferred);
        let arrows = arrows_of(&text);
        assert_eq!(
            arrows,
            [
                "── SYN ────────────▶",
                "◀──────── SYN-ACK ──",
                "── ACK ────────────▶",
                "◀──────────── FIN ──",
                "── 2 bytes ────────▶",
                "◀──────────── RST ──",
            ],
            "{text}"
        );
    }

    #[test]
    fn captured_packets_are_the_arrows_and_nothing_is_inferred() {
        let c = "127.0.0.1:40000";
        let s = "127.0.0.1:7788";
        let packet = |ts: f64, flags: &str, from: &str, to: &str, seq: u64, len: u64| {
            json!({"ts": ts, "role": "wire", "kind": "packet", "flags": flags, "seq": seq,
                   "ack": 1, "len": len, "from": from, "to": to})
        };
        let events = vec![
            json!({"ts": 0.0, "role": "server", "kind": "listen", "local": s}),
            packet(0.1, "SYN", c, s, 0, 0),
            packet(0.1, "SYN,ACK", s, c, 0, 0),
            json!({"ts": 0.1, "role": "client", "kind": "connect", "local": c, "peer": s}),
            packet(0.2, "PSH,ACK", c, s, 1, 2),
            json!({"ts": 0.2, "role": "client", "kind": "send", "local": c, "peer": s, "bytes": 2}),
            packet(0.3, "RST", s, c, 1, 0),
        ];
        let text = render(&events, false, Arrows::Captured);
        let arrows = arrows_of(&text);
        assert_eq!(
            arrows,
            [
                "── SYN ────────────▶",
                "◀──────── SYN,ACK ──",
                "── PSH,ACK ────────▶",
                "◀──────────── RST ──",
            ],
            "{text}"
        );
        assert!(text.contains("packets on lo"), "{text}");
        assert!(
            text.contains("seq=1 ack=1 len=2│"),
            "the sender's numbers: {text}"
        );
        // Without a capture the same events draw nothing from the packets.
        let inferred = render(&events, false, Arrows::InferredNoCapture);
        assert!(inferred.contains("(arrows inferred)"), "{inferred}");
        assert!(!inferred.contains("PSH,ACK"), "{inferred}");
    }
}
