//! What each demo's packets must show, when it ran with `--wire` and the capture worked.
//!
//! A scenario proves its point through the calls (`read() = 0`, `ECONNRESET`); the capture
//! proves it again on the wire, independently: a FIN is a segment with the FIN flag, from a
//! given side, at a given time. [`check`] returns the packets that prove the demo, named for
//! its `✓ shown:` line, or an error that says what the wire showed instead.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Result};
use serde_json::Value;

use super::{is, ladder, ts, SERVER, WIRE};

/// One captured segment, as the checks read it.
#[derive(Debug, Clone, Copy)]
pub struct Seg<'a> {
    pub ts: f64,
    pub flags: &'a str,
    /// It went from the client's side to the server's.
    pub from_client: bool,
    /// The client's address: names the connection.
    pub client: &'a str,
    pub seq: u64,
    pub ack: Option<u64>,
    pub len: u64,
}

impl Seg<'_> {
    fn has(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f == flag)
    }

    fn fin(&self) -> bool {
        self.has("FIN")
    }

    fn rst(&self) -> bool {
        self.has("RST")
    }

    fn syn(&self) -> bool {
        self.has("SYN")
    }

    /// A bare acknowledgement: no data, no SYN, FIN or RST.
    fn bare_ack(&self) -> bool {
        self.flags == "ACK" && self.len == 0
    }

    fn side(&self) -> &'static str {
        if self.from_client {
            "client"
        } else {
            "server"
        }
    }

    /// `the server's FIN,ACK (0.004 s)`.
    fn said(&self) -> String {
        format!("the {}'s {} ({:.3} s)", self.side(), self.flags, self.ts)
    }

    /// `server FIN,ACK`, `client PSH,ACK 6`: briefly, for a list.
    fn brief(&self) -> String {
        match self.len {
            0 => format!("{} {}", self.side(), self.flags),
            n => format!("{} {} {n}", self.side(), self.flags),
        }
    }
}

/// The captured segments of a run, in time order.
pub fn segments(events: &[Value]) -> Vec<Seg<'_>> {
    let servers = ladder::server_ports(events);
    let mut segs: Vec<Seg> = events
        .iter()
        .filter(|e| e["role"] == WIRE && e["kind"] == "packet")
        .map(|e| {
            let from_client = super::port_of(&e["to"]).is_some_and(|p| servers.contains(&p));
            let client = if from_client { &e["from"] } else { &e["to"] };
            Seg {
                ts: ts(e),
                flags: e["flags"].as_str().unwrap_or(""),
                from_client,
                client: client.as_str().unwrap_or(""),
                seq: e["seq"].as_u64().unwrap_or(0),
                ack: e["ack"].as_u64(),
                len: e["len"].as_u64().unwrap_or(0),
            }
        })
        .collect();
    segs.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    segs
}

/// What the wire showed, briefly (the first packets), for an error message.
fn seen(segs: &[Seg]) -> String {
    if segs.is_empty() {
        return "no packet at all".into();
    }
    let told: Vec<String> = segs.iter().take(16).map(Seg::brief).collect();
    let more = if segs.len() > 16 { ", …" } else { "" };
    format!("{}{more}", told.join(", "))
}

/// The first segment after `after` (seconds) that satisfies `wanted`, or an error that says
/// what came instead.
fn expect<'a>(
    segs: &[Seg<'a>],
    what: &str,
    after: f64,
    wanted: impl Fn(&Seg) -> bool,
) -> Result<Seg<'a>> {
    match segs.iter().find(|s| s.ts >= after && wanted(s)) {
        Some(seg) => Ok(*seg),
        None => bail!(
            "expected {what} on the wire, but the capture shows: {}",
            seen(segs)
        ),
    }
}

fn no_rst(segs: &[Seg]) -> Result<()> {
    if let Some(rst) = segs.iter().find(|s| s.rst()) {
        bail!("{} came where no RST should: {}", rst.said(), seen(segs));
    }
    Ok(())
}

/// The packets that prove demo `name`'s point, for its `✓ shown:` line, or what came instead.
pub fn check(name: &str, events: &[Value]) -> Result<String> {
    if let Some(failed) = events
        .iter()
        .find(|e| e["role"] == WIRE && e["kind"] == "error")
    {
        bail!(
            "{}",
            failed["detail"].as_str().unwrap_or("the capture failed")
        );
    }
    let segs = segments(events);
    ensure!(!segs.is_empty(), "the capture saw no packet of this demo");
    match name {
        "orderly-close" => closer_last(&segs, true),
        "time-wait-bind" => closer_last(&segs, false),
        "write-after-fin" => write_after_fin(&segs),
        "abort-rst" | "unread-data-rst" => rst_no_fin(&segs),
        "refused" => refused(&segs),
        "backlog-full" => backlog_full(&segs),
        "half-close" => half_close(&segs),
        "crash-fin" | "multiplexed-client" => server_fin(&segs),
        "idle-timeout" => idle_timeout(&segs),
        "parent-keeps-fd" => parent_keeps_fd(&segs, events),
        "blocking-backlog" => one_at_a_time(&segs, false),
        "process-per-client" | "thread-per-client" => one_at_a_time(&segs, true),
        "poll-many" => poll_many(&segs),
        "byte-stream" => byte_stream(&segs),
        "nonblocking-spin" => echoed_then_fins(&segs),
        _ => echoed_and_closed(&segs),
    }
}

/// orderly-close (the client closes first), time-wait-bind (the server does): a FIN from
/// each side, then the closer's last ACK of the other's FIN, and no RST.
fn closer_last(segs: &[Seg], client_closes: bool) -> Result<String> {
    let (closer, other) = if client_closes {
        ("client", "server")
    } else {
        ("server", "client")
    };
    let first = expect(segs, &format!("a FIN from the {closer}"), 0.0, |s| {
        s.fin() && s.from_client == client_closes
    })?;
    let second = expect(
        segs,
        &format!("then a FIN from the {other}"),
        first.ts,
        |s| s.fin() && s.from_client != client_closes,
    )?;
    let last = expect(
        segs,
        &format!("the {closer}'s last ACK of that FIN"),
        second.ts,
        |s| s.from_client == client_closes && s.bare_ack() && s.ack == Some(second.seq + 1),
    )?;
    no_rst(segs)?;
    Ok(format!(
        "{}, {}, then the {closer}'s last ACK ({:.3} s); no RST",
        first.said(),
        second.said(),
        last.ts
    ))
}

fn write_after_fin(segs: &[Seg]) -> Result<String> {
    let fin = expect(segs, "the crashed server's FIN", 0.0, |s| {
        s.fin() && !s.from_client
    })?;
    let data = expect(segs, "the client's write after that FIN", fin.ts, |s| {
        s.from_client && s.len > 0
    })?;
    let rst = expect(
        segs,
        "an RST from the server's side after that write",
        data.ts,
        |s| s.rst() && !s.from_client,
    )?;
    Ok(format!(
        "{}, the client's {} bytes after it ({:.3} s), answered by {}",
        fin.said(),
        data.len,
        data.ts,
        rst.said()
    ))
}

fn rst_no_fin(segs: &[Seg]) -> Result<String> {
    let rst = expect(segs, "an RST from the server", 0.0, |s| {
        s.rst() && !s.from_client
    })?;
    if let Some(fin) = segs.iter().find(|s| s.fin()) {
        bail!(
            "{} crossed the wire: expected an RST and no FIN ({})",
            fin.said(),
            seen(segs)
        );
    }
    Ok(format!("{} and no FIN from either side", rst.said()))
}

fn refused(segs: &[Seg]) -> Result<String> {
    let syn = expect(segs, "the client's SYN", 0.0, |s| s.syn() && s.from_client)?;
    let rst = expect(segs, "an RST answering the SYN", syn.ts, |s| {
        s.rst() && !s.from_client && s.client == syn.client
    })?;
    Ok(format!(
        "the client's SYN ({:.3} s) answered by an {} from the port nobody listens on ({:.3} s)",
        syn.ts, rst.flags, rst.ts
    ))
}

/// Each client's SYNs; a dropped SYN is sent again by the client's kernel.
fn syns_by_client<'a>(segs: &[Seg<'a>]) -> HashMap<&'a str, Vec<f64>> {
    let mut syns: HashMap<&str, Vec<f64>> = HashMap::new();
    for s in segs
        .iter()
        .filter(|s| s.syn() && s.from_client && !s.has("ACK"))
    {
        syns.entry(s.client).or_default().push(s.ts);
    }
    syns
}

/// For `Lab::wait_wire`: has some client's SYN been sent again?
pub fn syn_sent_again(packets: &[&Value]) -> bool {
    let mut syns: HashMap<&str, usize> = HashMap::new();
    for e in packets {
        if e["flags"] == "SYN" {
            *syns.entry(e["from"].as_str().unwrap_or("")).or_default() += 1;
        }
    }
    syns.values().any(|&n| n >= 2)
}

fn backlog_full(segs: &[Seg]) -> Result<String> {
    let syns = syns_by_client(segs);
    let again = syns.values().filter(|t| t.len() >= 2).count();
    let Some(gap) = syns
        .values()
        .filter(|t| t.len() >= 2)
        .map(|t| t[1] - t[0])
        .reduce(f64::min)
    else {
        bail!(
            "expected a SYN sent again (the first was dropped), but no client sent its SYN twice: {}",
            seen(segs)
        );
    };
    let answered: HashSet<&str> = segs
        .iter()
        .filter(|s| s.has("SYN") && s.has("ACK") && !s.from_client)
        .map(|s| s.client)
        .collect();
    Ok(format!(
        "{} answered with SYN,ACK; {} dropped and sent again by the client's kernel {gap:.1} s later",
        plural(answered.len(), "handshake"),
        plural(again, "SYN")
    ))
}

fn half_close(segs: &[Seg]) -> Result<String> {
    let fin = expect(segs, "the client's FIN", 0.0, |s| s.fin() && s.from_client)?;
    let data = expect(
        segs,
        "the server's data after the client's FIN",
        fin.ts,
        |s| !s.from_client && s.len > 0,
    )?;
    let last = expect(segs, "the server's FIN", data.ts, |s| {
        s.fin() && !s.from_client
    })?;
    Ok(format!(
        "{} one way, then the server's {} bytes still flowing back ({:.3} s), then {}",
        fin.said(),
        data.len,
        data.ts,
        last.said()
    ))
}

fn server_fin(segs: &[Seg]) -> Result<String> {
    let fin = expect(segs, "a FIN from the server's side", 0.0, |s| {
        s.fin() && !s.from_client
    })?;
    if let Some(earlier) = segs
        .iter()
        .find(|s| s.fin() && s.from_client && s.ts < fin.ts)
    {
        bail!(
            "{} came before the server's FIN: {}",
            earlier.said(),
            seen(segs)
        );
    }
    no_rst(segs)?;
    Ok(format!("{}, sent by its kernel, and no RST", fin.said()))
}

fn idle_timeout(segs: &[Seg]) -> Result<String> {
    let fin = expect(segs, "the server's FIN", 0.0, |s| s.fin() && !s.from_client)?;
    let before = segs.iter().rev().find(|s| s.ts < fin.ts);
    let silence = before.map_or(0.0, |s| fin.ts - s.ts);
    ensure!(
        silence >= 0.9,
        "the server's FIN came {silence:.3} s after the packet before it, not after a silence of 1 s: {}",
        seen(segs)
    );
    server_fin(segs)?;
    Ok(format!(
        "{} after {silence:.1} s in which no packet crossed",
        fin.said()
    ))
}

fn parent_keeps_fd(segs: &[Seg], events: &[Value]) -> Result<String> {
    let Some(exit) = events.iter().find(|e| is(e, SERVER, "exit")) else {
        bail!("the child's exit event is missing");
    };
    let fin = expect(segs, "the server's FIN", 0.0, |s| s.fin() && !s.from_client)?;
    ensure!(
        fin.ts > ts(exit),
        "{} came before the child exited ({:.3} s): the parent's copy held nothing back",
        fin.said(),
        ts(exit)
    );
    Ok(format!(
        "no FIN while the parent held its copy; {}, {:.1} s after the child exited",
        fin.said(),
        fin.ts - ts(exit)
    ))
}

/// The connections in the order their SYNs came.
fn clients<'a>(segs: &[Seg<'a>]) -> Vec<&'a str> {
    let mut order = Vec::new();
    for s in segs.iter().filter(|s| s.syn() && s.from_client) {
        if !order.contains(&s.client) {
            order.push(s.client);
        }
    }
    order
}

/// Two clients: client 2's handshake, its echo, and client 1's FIN. Served at once
/// (`concurrent`) the echo crosses before client 1's FIN; one at a time, after it.
fn one_at_a_time(segs: &[Seg], concurrent: bool) -> Result<String> {
    let order = clients(segs);
    ensure!(
        order.len() >= 2,
        "expected two clients' SYNs, saw: {}",
        seen(segs)
    );
    let (one, two) = (order[0], order[1]);
    let handshake = expect(
        segs,
        "client 2's handshake (its ACK of the SYN,ACK)",
        0.0,
        |s| s.client == two && s.from_client && s.bare_ack(),
    )?;
    let echo = expect(segs, "the echo to client 2", 0.0, |s| {
        s.client == two && !s.from_client && s.len > 0
    })?;
    let left = expect(segs, "client 1's FIN", 0.0, |s| {
        s.client == one && s.fin() && s.from_client
    })?;
    if concurrent {
        ensure!(
            echo.ts < left.ts,
            "client 2's echo crossed at {:.3} s, after client 1's FIN at {:.3} s",
            echo.ts,
            left.ts
        );
        Ok(format!(
            "client 2's echo crossed at {:.3} s, before client 1's FIN ({:.3} s)",
            echo.ts, left.ts
        ))
    } else {
        ensure!(
            handshake.ts < left.ts && echo.ts > left.ts,
            "client 2's handshake ended at {:.3} s and its echo crossed at {:.3} s, with client 1's FIN at {:.3} s",
            handshake.ts,
            echo.ts,
            left.ts
        );
        Ok(format!(
            "client 2's handshake completed at {:.3} s, its echo crossed only at {:.3} s, after client 1's FIN ({:.3} s)",
            handshake.ts, echo.ts, left.ts
        ))
    }
}

fn poll_many(segs: &[Seg]) -> Result<String> {
    let connected: HashSet<&str> = segs
        .iter()
        .filter(|s| s.has("SYN") && s.has("ACK") && !s.from_client)
        .map(|s| s.client)
        .collect();
    let echoed: HashSet<&str> = segs
        .iter()
        .filter(|s| !s.from_client && s.len > 0)
        .map(|s| s.client)
        .collect();
    ensure!(
        connected.len() >= super::scenarios::MANY && echoed.len() >= super::scenarios::MANY,
        "expected {} handshakes and echoes, the capture shows {} and {}",
        super::scenarios::MANY,
        connected.len(),
        echoed.len()
    );
    Ok(format!(
        "{} handshakes and {} echoes in {} packets",
        connected.len(),
        echoed.len(),
        segs.len()
    ))
}

/// Bytes a side sent: the end of its highest segment (sequence numbers count from 1).
fn bytes_sent(segs: &[Seg], from_client: bool) -> (u64, usize, u64) {
    let data: Vec<&Seg> = segs
        .iter()
        .filter(|s| s.from_client == from_client && s.len > 0)
        .collect();
    let end = data.iter().map(|s| s.seq + s.len).max().unwrap_or(1);
    let largest = data.iter().map(|s| s.len).max().unwrap_or(0);
    (end - 1, data.len(), largest)
}

fn byte_stream(segs: &[Seg]) -> Result<String> {
    let (client_bytes, client_segs, _) = bytes_sent(segs, true);
    let (server_bytes, server_segs, largest) = bytes_sent(segs, false);
    ensure!(
        client_bytes == 14 && server_bytes == super::scenarios::LARGE as u64,
        "expected 14 bytes from the client and {} from the server, the capture shows {client_bytes} and {server_bytes}",
        super::scenarios::LARGE
    );
    Ok(format!(
        "the client's 3 writes crossed as {}; the server's one write of {server_bytes} bytes as {} of up to {largest} bytes",
        plural(client_segs, "segment"),
        plural(server_segs, "segment")
    ))
}

/// `4 segments`, `1 segment`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// One client echoed: its bytes came back in full, then a FIN from each side, no RST.
fn echoed_then_fins(segs: &[Seg]) -> Result<String> {
    let (sent, echoed) = (bytes_sent(segs, true).0, bytes_sent(segs, false).0);
    ensure!(
        sent > 0 && sent == echoed,
        "the client sent {sent} bytes and {echoed} came back: {}",
        seen(segs)
    );
    let fin = expect(segs, "the client's FIN", 0.0, |s| s.fin() && s.from_client)?;
    let back = expect(segs, "the server's FIN", fin.ts, |s| {
        s.fin() && !s.from_client
    })?;
    no_rst(segs)?;
    Ok(format!(
        "{} each way, then {} and {}; no RST",
        plural(sent as usize, "byte"),
        fin.said(),
        back.said()
    ))
}

/// Any other demo: a handshake, data both ways, and how each connection ended.
fn echoed_and_closed(segs: &[Seg]) -> Result<String> {
    expect(segs, "a SYN,ACK", 0.0, |s| s.has("SYN") && s.has("ACK"))?;
    let count = |f: &dyn Fn(&Seg) -> bool| segs.iter().filter(|s| f(s)).count();
    let (sent, echoed) = (bytes_sent(segs, true).0, bytes_sent(segs, false).0);
    Ok(format!(
        "{}, {sent} bytes from the clients and {echoed} back, {} and {}",
        plural(count(&|s| s.has("SYN") && s.has("ACK")), "handshake"),
        plural(count(&|s| s.fin()), "FIN"),
        plural(count(&|s| s.rst()), "RST")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packet(ts: f64, flags: &str, from: &str, to: &str, seq: u64, ack: u64, len: u64) -> Value {
        json!({"ts": ts, "role": "wire", "kind": "packet", "flags": flags, "seq": seq,
               "ack": ack, "len": len, "from": from, "to": to})
    }

    const C: &str = "127.0.0.1:40000";
    const S: &str = "127.0.0.1:7788";

    fn run_with(tail: Vec<Value>) -> Vec<Value> {
        let mut events = vec![
            json!({"ts": 0.0, "role": "server", "kind": "listen", "local": S}),
            packet(0.1, "SYN", C, S, 0, 0, 0),
            packet(0.1, "SYN,ACK", S, C, 0, 1, 0),
            packet(0.1, "ACK", C, S, 1, 1, 0),
        ];
        events.extend(tail);
        events
    }

    #[test]
    fn orderly_close_needs_both_fins_and_the_closers_last_ack() {
        let good = run_with(vec![
            packet(0.2, "FIN,ACK", C, S, 1, 1, 0),
            packet(0.3, "FIN,ACK", S, C, 1, 2, 0),
            packet(0.3, "ACK", C, S, 2, 2, 0),
        ]);
        let shown = check("orderly-close", &good).unwrap();
        assert!(shown.contains("the client's FIN,ACK"), "{shown}");
        let reset = run_with(vec![
            packet(0.2, "FIN,ACK", C, S, 1, 1, 0),
            packet(0.3, "RST,ACK", S, C, 1, 2, 0),
        ]);
        let error = check("orderly-close", &reset).unwrap_err().to_string();
        assert!(error.contains("server RST,ACK"), "{error}");
    }

    #[test]
    fn an_rst_demo_fails_when_a_fin_crossed() {
        let fin = run_with(vec![packet(0.2, "FIN,ACK", S, C, 1, 1, 0)]);
        assert!(check("abort-rst", &fin).is_err());
        let rst = run_with(vec![packet(0.2, "RST,ACK", S, C, 1, 1, 0)]);
        assert!(check("abort-rst", &rst).unwrap().contains("no FIN"));
    }

    #[test]
    fn write_after_fin_needs_the_rst_after_the_write() {
        let rst_first = run_with(vec![
            packet(0.2, "FIN,ACK", S, C, 1, 1, 0),
            packet(0.3, "RST", S, C, 2, 0, 0),
            packet(0.4, "PSH,ACK", C, S, 1, 2, 7),
        ]);
        assert!(check("write-after-fin", &rst_first).is_err());
        let good = run_with(vec![
            packet(0.2, "FIN,ACK", S, C, 1, 1, 0),
            packet(0.4, "PSH,ACK", C, S, 1, 2, 7),
            packet(0.4, "RST", S, C, 2, 0, 0),
        ]);
        assert!(check("write-after-fin", &good).is_ok());
    }
}
