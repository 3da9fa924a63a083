//! Lines over a byte stream: TCP delivers bytes, not lines, so a chat server must find the
//! lines itself. One `read()` may hold half a line, or ten lines and the start of the next;
//! [`LineFramer`] keeps the unfinished part until its `\n` arrives, and refuses to keep more
//! than `max` bytes of it, so a peer that never sends `\n` cannot grow our memory.
//!
//! [`clean`] makes a line safe to put on other people's terminals.

/// Splits a byte stream into lines ending in `\n` (a `\r` before it is dropped too, as
/// telnet and nc on some systems send `\r\n`).
#[derive(Debug)]
pub struct LineFramer {
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// The longest line accepted, in bytes, without its `\r\n`.
    max: usize,
}

/// A line grew past the limit before its `\n` came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub max: usize,
}

impl LineFramer {
    pub fn new(max: usize) -> LineFramer {
        LineFramer {
            partial: Vec::new(),
            max,
        }
    }

    /// Feed the bytes of one read; every line they complete is appended to `lines`, in
    /// order, without its `\n` or `\r\n`. An over-long line is an error (the lines before
    /// it are still appended), and the framer is then spent: the connection ends, since no
    /// later byte can be trusted to start a line.
    pub fn push(&mut self, bytes: &[u8], lines: &mut Vec<Vec<u8>>) -> Result<(), TooLong> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.check(line.len())?;
            lines.push(line);
            rest = &rest[end + 1..];
        }
        // What is left has no `\n` yet. A last `\r` may end a line of exactly `max`
        // bytes; anything else beyond `max` can never become a valid line.
        self.partial.extend_from_slice(rest);
        let ends_in_cr = self.partial.last() == Some(&b'\r');
        self.check(self.partial.len() - usize::from(ends_in_cr))
    }

    /// Bytes held for a line not yet finished (at most `max + 1`: a line and its `\r`).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    fn check(&mut self, len: usize) -> Result<(), TooLong> {
        if len > self.max {
            self.partial = Vec::new();
            return Err(TooLong { max: self.max });
        }
        Ok(())
    }
}

/// What may reach another person's terminal: invalid UTF-8 becomes U+FFFD (�), a TAB a
/// space, and every other control character — C0 (ESC starts the terminal's escape
/// sequences), DEL and C1 (U+0080–U+009F; U+009B is a one-character CSI) — is dropped.
pub fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None, // C0, DEL and C1 are exactly Unicode's Cc
            c => Some(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut LineFramer, bytes: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        framer.push(bytes, &mut got).expect("within the limit");
        got.into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_in_pieces_and_many_lines_in_one_read() {
        let mut f = LineFramer::new(1024);
        assert!(lines(&mut f, b"hel").is_empty());
        assert!(lines(&mut f, b"lo wo").is_empty());
        assert_eq!(
            lines(&mut f, b"rld\nsecond\nthi"),
            ["hello world", "second"]
        );
        assert_eq!(lines(&mut f, b"rd\n"), ["third"]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn crlf_and_empty_lines() {
        let mut f = LineFramer::new(1024);
        assert_eq!(lines(&mut f, b"a\r\n\r\nb\n"), ["a", "", "b"]);
        // The \r may arrive in one read and its \n in the next.
        assert!(lines(&mut f, b"c\r").is_empty());
        assert_eq!(lines(&mut f, b"\n"), ["c"]);
    }

    #[test]
    fn the_limit_counts_the_line_not_its_ending() {
        let mut f = LineFramer::new(4);
        assert_eq!(lines(&mut f, b"abcd\r\n"), ["abcd"]);
        assert_eq!(lines(&mut f, b"abcd\r"), Vec::<String>::new());
        assert_eq!(lines(&mut f, b"\n"), ["abcd"]);
        let mut got = Vec::new();
        assert_eq!(f.push(b"ab\nabcde\n", &mut got), Err(TooLong { max: 4 }));
        assert_eq!(got, [b"ab"], "the lines before it still count");
        let mut f = LineFramer::new(4);
        assert!(lines(&mut f, b"abc").is_empty());
        assert_eq!(f.push(b"de", &mut got), Err(TooLong { max: 4 }));
        assert_eq!(f.pending(), 0, "nothing kept of an over-long line");
    }

    #[test]
    fn memory_stays_bounded_without_a_newline() {
        let mut f = LineFramer::new(1024);
        let mut got = Vec::new();
        assert!(f.push(&[b'x'; 1024], &mut got).is_ok());
        assert!(
            f.push(b"\r", &mut got).is_ok(),
            "1024 bytes and the \\r of their \\r\\n"
        );
        assert_eq!(f.pending(), 1025);
        assert!(f.push(b"y", &mut got).is_err());
        assert!(LineFramer::new(1024).push(&[b'x'; 1025], &mut got).is_err());
        assert!(got.is_empty());
    }

    #[test]
    fn cleaning_drops_controls_and_replaces_invalid_utf8() {
        assert_eq!(clean(b"hello"), "hello");
        assert_eq!(clean("你好".as_bytes()), "你好");
        assert_eq!(clean(b"\x1b[31mred\x1b[0m"), "[31mred[0m");
        assert_eq!(clean(b"a\tb"), "a b");
        assert_eq!(clean(b"bell\x07 del\x7f nul\x00"), "bell del nul");
        assert_eq!(clean("csi\u{9b}2J nel\u{85}".as_bytes()), "csi2J nel");
        assert_eq!(clean(&[b'o', b'k', 0xFF, 0xC4]), "ok\u{FFFD}\u{FFFD}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Feed `bytes` cut at `cuts`; every line, or where it failed.
    fn frame(bytes: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut framer = LineFramer::new(max);
        let mut lines = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        for piece in points.windows(2) {
            if framer.push(&bytes[piece[0]..piece[1]], &mut lines).is_err() {
                return (lines, true);
            }
        }
        (lines, false)
    }

    /// Bytes rich in what matters: `\n`, `\r`, and runs without either.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>(), b'a'..=b'e'];
        proptest::collection::vec(byte, 0..400)
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_lines(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            max in 1usize..40,
        ) {
            let whole = frame(&bytes, &[], max);
            let split = frame(&bytes, &cuts, max);
            prop_assert_eq!(&split, &whole);
            // And the lines are the stream's own: no `\n` inside, none over the limit.
            for line in &whole.0 {
                prop_assert!(!line.contains(&b'\n'));
                prop_assert!(line.len() <= max);
            }
        }
    }
}
