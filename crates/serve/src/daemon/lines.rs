//! Reading lines with a length limit that never buffers an oversize line.

use std::io::BufRead;

/// One read from a line-oriented stream.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line, without its newline.
    Line(Vec<u8>),
    /// A line longer than the limit: it was read to its newline (or the end
    /// of the stream) and discarded; this many bytes.
    TooLong(u64),
    /// The end of the stream.
    Eof,
}

/// Reads the next line of at most `max` bytes (newline excluded). A longer
/// line is consumed and thrown away chunk by chunk, so memory stays at the
/// reader's buffer however long it is.
pub fn read_bounded_line<R: BufRead + ?Sized>(r: &mut R, max: usize) -> std::io::Result<LineRead> {
    let mut line = Vec::new();
    let mut discarded: u64 = 0;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (discarded, line.is_empty()) {
                (0, true) => LineRead::Eof,
                (0, false) => LineRead::Line(line),
                (n, _) => LineRead::TooLong(n),
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if discarded > 0 || line.len() + chunk.len() > max {
            discarded += (line.len() + chunk.len()) as u64;
            line = Vec::new();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if discarded > 0 {
                LineRead::TooLong(discarded)
            } else {
                LineRead::Line(line)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn lines_within_the_limit_pass_and_longer_ones_are_skipped_whole() {
        let data = b"ab\nccccccccccc\nd\ntail".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        assert_eq!(
            read_bounded_line(&mut r, 5).unwrap(),
            LineRead::Line(b"ab".to_vec())
        );
        assert_eq!(read_bounded_line(&mut r, 5).unwrap(), LineRead::TooLong(11));
        assert_eq!(
            read_bounded_line(&mut r, 5).unwrap(),
            LineRead::Line(b"d".to_vec())
        );
        assert_eq!(
            read_bounded_line(&mut r, 5).unwrap(),
            LineRead::Line(b"tail".to_vec())
        );
        assert_eq!(read_bounded_line(&mut r, 5).unwrap(), LineRead::Eof);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes() {
        let mut r = BufReader::with_capacity(2, &b"abcde\nabcdef\n"[..]);
        assert_eq!(
            read_bounded_line(&mut r, 5).unwrap(),
            LineRead::Line(b"abcde".to_vec())
        );
        assert_eq!(read_bounded_line(&mut r, 5).unwrap(), LineRead::TooLong(6));
    }
}
