//! `--pcap FILE`: the captured frames in the classic pcap format, which Wireshark and
//! `tcpdump -r` open.
//!
//! The format is small enough to write by hand: a 24-byte file header (magic number,
//! version 2.4, the largest frame kept, the link type), then each frame behind a 16-byte
//! record header (its time in seconds and microseconds, the bytes kept, the bytes it had).
//! Everything is in this machine's byte order; the magic number tells readers which one.

use std::io::{self, Write};

/// The classic magic number, microsecond timestamps.
const MAGIC: u32 = 0xa1b2_c3d4;
/// Link type 1: Ethernet (on `lo` Linux gives each frame an Ethernet header with zero MACs).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The largest frame the file says it keeps (tcpdump's default).
pub const SNAPLEN: u32 = 262_144;

/// The 24-byte file header.
pub fn file_header() -> [u8; 24] {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    header[4..6].copy_from_slice(&2u16.to_ne_bytes()); // version 2.4
    header[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs stay 0: times are UTC, their accuracy unstated.
    header[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    header
}

/// The 16-byte header of one frame: captured at `at_ns` (nanoseconds since the Unix epoch),
/// `kept` bytes of a frame that had `original`.
pub fn record_header(at_ns: u128, kept: usize, original: usize) -> [u8; 16] {
    let secs = (at_ns / 1_000_000_000) as u32;
    let micros = ((at_ns % 1_000_000_000) / 1_000) as u32;
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&secs.to_ne_bytes());
    header[4..8].copy_from_slice(&micros.to_ne_bytes());
    header[8..12].copy_from_slice(&(kept as u32).to_ne_bytes());
    header[12..16].copy_from_slice(&(original as u32).to_ne_bytes());
    header
}

/// A pcap file being written: the header first, then one record per frame.
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        out.write_all(&file_header())?;
        Ok(PcapWriter { out })
    }

    /// One frame: `frame` is what was kept of a frame of `original` bytes.
    pub fn write(&mut self, at_ns: u128, frame: &[u8], original: usize) -> io::Result<()> {
        let kept = &frame[..frame.len().min(SNAPLEN as usize)];
        self.out
            .write_all(&record_header(at_ns, kept.len(), original))?;
        self.out.write_all(kept)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_file_header_is_the_classic_24_bytes() {
        let header = file_header();
        assert_eq!(u32_at(&header, 0), 0xa1b2_c3d4);
        assert_eq!(u16::from_ne_bytes([header[4], header[5]]), 2);
        assert_eq!(u16::from_ne_bytes([header[6], header[7]]), 4);
        assert_eq!(u32_at(&header, 8), 0);
        assert_eq!(u32_at(&header, 12), 0);
        assert_eq!(u32_at(&header, 16), 262_144);
        assert_eq!(u32_at(&header, 20), 1);
    }

    #[test]
    fn a_record_holds_its_time_in_seconds_and_microseconds_then_the_frame() {
        let mut file = Vec::new();
        let mut pcap = PcapWriter::new(&mut file).unwrap();
        pcap.write(1_700_000_000_123_456_789, &[1, 2, 3], 60)
            .unwrap();
        assert_eq!(file.len(), 24 + 16 + 3);
        let record = &file[24..];
        assert_eq!(u32_at(record, 0), 1_700_000_000);
        assert_eq!(u32_at(record, 4), 123_456);
        assert_eq!(u32_at(record, 8), 3);
        assert_eq!(u32_at(record, 12), 60);
        assert_eq!(&record[16..], &[1, 2, 3]);
    }
}
