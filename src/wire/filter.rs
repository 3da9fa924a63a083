//! The kernel-side filter of the capture: a classic BPF program that keeps only TCP segments
//! to or from the run's ports, and only the incoming copy of each.
//!
//! On `lo` every packet passes the capture point twice: once leaving (`PACKET_OUTGOING`) and
//! once arriving. The filter drops the leaving copy, so each packet is seen once, and drops
//! every packet of other programs, so a busy loopback costs the capture nothing. It is the
//! program `tcpdump -dd 'tcp port P'` would print, plus the direction test.

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// The opcodes used (linux/filter.h).
const LD_W_ABS: u16 = 0x20; // A = u32 at [k]
const LD_H_ABS: u16 = 0x28; // A = u16 at [k]
const LD_B_ABS: u16 = 0x30; // A = u8 at [k]
const LD_H_IND: u16 = 0x48; // A = u16 at [X + k]
const LDX_B_MSH: u16 = 0xb1; // X = 4 * ([k] & 0xf): the IPv4 header's length
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

/// `SKF_AD_OFF + SKF_AD_PKTTYPE`: loads the packet's direction instead of packet bytes.
const PKTTYPE: u32 = 0xffff_f000 + 4;
const PACKET_OUTGOING: u32 = 4;
const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const TCP: u32 = 6;
/// How much of a packet to keep: all of it (loopback frames are at most 64 KiB).
const KEEP: u32 = 262_144;

/// Where a jump goes, resolved once the program is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Next,
    Ipv6,
    Keep,
    Drop,
}

/// An instruction whose jump targets are still labels.
struct Step {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

fn step(code: u16, k: u32) -> Step {
    Step {
        code,
        k,
        jt: To::Next,
        jf: To::Next,
    }
}

fn jump(code: u16, k: u32, jt: To, jf: To) -> Step {
    Step { code, k, jt, jf }
}

/// Keep the segment when the 16-bit value in A is one of `ports`.
fn any_port(steps: &mut Vec<Step>, ports: &[u16]) {
    for &port in ports {
        steps.push(jump(JEQ_K, u32::from(port), To::Keep, To::Next));
    }
}

/// The program keeping TCP segments (IPv4 or IPv6 over Ethernet) whose source or destination
/// port is in `ports`, arriving copies only. No ports: it keeps nothing.
pub fn program(ports: &[u16]) -> Vec<Instruction> {
    let mut steps = vec![
        step(LD_W_ABS, PKTTYPE),
        jump(JEQ_K, PACKET_OUTGOING, To::Drop, To::Next),
        step(LD_H_ABS, 12), // the ethertype
        jump(JEQ_K, ETHERTYPE_IPV4, To::Next, To::Ipv6),
        // IPv4: the protocol byte, then no fragment but the first (it has the ports).
        step(LD_B_ABS, 14 + 9),
        jump(JEQ_K, TCP, To::Next, To::Drop),
        step(LD_H_ABS, 14 + 6),
        jump(JSET_K, 0x1fff, To::Drop, To::Next),
        step(LDX_B_MSH, 14),
        step(LD_H_IND, 14), // source port
    ];
    any_port(&mut steps, ports);
    steps.push(step(LD_H_IND, 14 + 2)); // destination port
    any_port(&mut steps, ports);
    steps.push(jump(JA, 0, To::Drop, To::Drop));
    let ipv6 = steps.len();
    steps.extend([
        jump(JEQ_K, ETHERTYPE_IPV6, To::Next, To::Drop),
        // IPv6 without extension headers: next header, then the ports after 40 bytes.
        step(LD_B_ABS, 14 + 6),
        jump(JEQ_K, TCP, To::Next, To::Drop),
        step(LD_H_ABS, 14 + 40),
    ]);
    any_port(&mut steps, ports);
    steps.push(step(LD_H_ABS, 14 + 42));
    any_port(&mut steps, ports);
    let keep = steps.len() + 1;
    steps.push(jump(JA, 0, To::Drop, To::Drop));
    steps.push(step(RET_K, KEEP));
    let drop = steps.len();
    steps.push(step(RET_K, 0));

    let target = |to: To| match to {
        To::Next => None,
        To::Ipv6 => Some(ipv6),
        To::Keep => Some(keep),
        To::Drop => Some(drop),
    };
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let offset = |to: To| target(to).map_or(0, |t| t - (i + 1));
            if s.code == JA {
                // An unconditional jump keeps its offset in k.
                return Instruction {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    k: offset(s.jt) as u32,
                };
            }
            Instruction {
                code: s.code,
                jt: u8::try_from(offset(s.jt)).expect("a short program"),
                jf: u8::try_from(offset(s.jf)).expect("a short program"),
                k: s.k,
            }
        })
        .collect()
}

/// The most ports one filter tests (every jump must stay within 255 instructions).
pub const MAX_PORTS: usize = 48;

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of the instructions used: enough to test the program on frames.
    fn run(program: &[Instruction], frame: &[u8], outgoing: bool) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |at: usize| u32::from(frame.get(at).copied().unwrap_or(0));
        let half = |at: usize| byte(at) << 8 | byte(at + 1);
        loop {
            let i = program[pc];
            pc += 1;
            let k = i.k as usize;
            let mut cond = None;
            match i.code {
                LD_W_ABS if i.k == PKTTYPE => a = if outgoing { PACKET_OUTGOING } else { 0 },
                LD_H_ABS => a = half(k),
                LD_B_ABS => a = byte(k),
                LD_H_IND => a = half(x as usize + k),
                LDX_B_MSH => x = 4 * (byte(k) & 0xf),
                JEQ_K => cond = Some(a == i.k),
                JSET_K => cond = Some(a & i.k != 0),
                JA => pc += k,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            if let Some(c) = cond {
                pc += usize::from(if c { i.jt } else { i.jf });
            }
        }
    }

    fn ipv4_tcp(src: u16, dst: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + 20 + 20];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        frame[14 + 9] = 6;
        frame[34..36].copy_from_slice(&src.to_be_bytes());
        frame[36..38].copy_from_slice(&dst.to_be_bytes());
        frame
    }

    fn ipv6_tcp(src: u16, dst: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + 40 + 20];
        frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        frame[14 + 6] = 6;
        frame[54..56].copy_from_slice(&src.to_be_bytes());
        frame[56..58].copy_from_slice(&dst.to_be_bytes());
        frame
    }

    #[test]
    fn keeps_the_ports_both_ways_and_drops_the_rest() {
        let p = program(&[7788, 9000]);
        assert_eq!(run(&p, &ipv4_tcp(40000, 7788), false), KEEP);
        assert_eq!(run(&p, &ipv4_tcp(9000, 40000), false), KEEP);
        assert_eq!(run(&p, &ipv4_tcp(40000, 7789), false), 0);
        assert_eq!(run(&p, &ipv6_tcp(7788, 40000), false), KEEP);
        assert_eq!(run(&p, &ipv6_tcp(1, 2), false), 0);
    }

    #[test]
    fn drops_the_outgoing_copy_udp_and_later_fragments() {
        let p = program(&[7788]);
        assert_eq!(run(&p, &ipv4_tcp(40000, 7788), true), 0);
        let mut udp = ipv4_tcp(40000, 7788);
        udp[14 + 9] = 17;
        assert_eq!(run(&p, &udp, false), 0);
        let mut fragment = ipv4_tcp(40000, 7788);
        fragment[14 + 7] = 8; // fragment offset 8
        assert_eq!(run(&p, &fragment, false), 0);
    }

    #[test]
    fn no_ports_keep_nothing_and_many_ports_still_fit_the_jumps() {
        assert_eq!(run(&program(&[]), &ipv4_tcp(1, 2), false), 0);
        let many: Vec<u16> = (1..=MAX_PORTS as u16).collect();
        let p = program(&many);
        assert_eq!(run(&p, &ipv4_tcp(40000, MAX_PORTS as u16), false), KEEP);
        assert_eq!(run(&p, &ipv6_tcp(1, 40000), false), KEEP);
    }
}
