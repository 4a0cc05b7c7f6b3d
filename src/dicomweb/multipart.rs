//! A streaming reader of `multipart/related` bodies (RFC 2046 §5.1, RFC 2387), the envelope
//! WADO-RS wraps DICOM instances in. Parts are read one at a time from any `Read`: a part with a
//! `Content-Length` is read straight into its buffer; one without is scanned for the next
//! delimiter. Nothing beyond the part being read is held, and a part larger than the caller's
//! limit is refused before it is read whole.

use memchr::memmem;
use std::io::{self, Read};

/// Bytes asked of the underlying reader at a time.
const CHUNK: usize = 64 * 1024;
/// The most header bytes a part may have (a WADO-RS part has two or three short lines).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most bytes reserved for a part before they arrive.
const MAX_RESERVE: usize = 1 << 20;
/// The most bytes before the first delimiter (the preamble, empty in practice).
const MAX_PREAMBLE_BYTES: usize = 64 * 1024;

/// One part of the body.
#[derive(Debug)]
pub struct Part {
    /// The part's `Content-Type`, if it had one.
    pub content_type: Option<String>,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum MultipartError {
    /// The connection failed or the body ended early: worth another request.
    Io(io::Error),
    /// The body is not well-formed multipart, or a part is over the limit.
    Malformed(String),
}

impl std::fmt::Display for MultipartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MultipartError::Io(e) => write!(f, "reading the body: {e}"),
            MultipartError::Malformed(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for MultipartError {
    fn from(e: io::Error) -> Self {
        MultipartError::Io(e)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, MultipartError> {
    Err(MultipartError::Malformed(why.into()))
}

/// The `boundary` parameter of a `multipart/related` content type, or why there is none.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = split_params(content_type).into_iter();
    let media = params.next().unwrap_or_default();
    if !media.trim().eq_ignore_ascii_case("multipart/related") {
        return Err(format!("content type '{content_type}' is not multipart/related"));
    }
    for p in params {
        if let Some((name, value)) = p.split_once('=') {
            if name.trim().eq_ignore_ascii_case("boundary") {
                let v = unquote(value.trim());
                if v.is_empty() || v.len() > 70 {
                    return Err(format!("content type '{content_type}': a boundary has 1 to 70 characters"));
                }
                return Ok(v);
            }
        }
    }
    Err(format!("content type '{content_type}' has no boundary parameter"))
}

/// A media type's parameters split at the `;` outside quotes (the media type first).
pub(crate) fn split_params(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

pub(crate) fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (a preamble may come first).
    Start,
    /// At a delimiter: another part or the close delimiter follows.
    AtDelimiter,
    /// After the close delimiter.
    Done,
}

/// Reads the parts of one `multipart/related` body.
#[derive(Debug)]
pub struct MultipartReader<R> {
    inner: R,
    /// `CRLF--boundary`: what ends every part.
    delimiter: Vec<u8>,
    /// Bytes read and not yet consumed: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    state: State,
}

impl<R: Read> MultipartReader<R> {
    /// A reader of the body `inner` whose parts `boundary` separates.
    pub fn new(inner: R, boundary: &str) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        // The first delimiter may open the body without a CRLF before it: one is assumed.
        MultipartReader { inner, delimiter, buf: b"\r\n".to_vec(), pos: 0, eof: false, state: State::Start }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes; false at the end of the body.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + CHUNK, 0);
        let n = loop {
            match self.inner.read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// Reads until at least `n` bytes are available; false if the body ends first.
    fn want(&mut self, n: usize) -> io::Result<bool> {
        while self.available().len() < n {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn cut_short(&self, what: &str) -> MultipartError {
        MultipartError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the body ends {what}")))
    }

    /// The next part, or `None` after the close delimiter. A part over `max_bytes` is an error.
    pub fn next_part(&mut self, max_bytes: u64) -> Result<Option<Part>, MultipartError> {
        if self.state == State::Start {
            self.skip_preamble()?;
        }
        if self.state == State::Done {
            return Ok(None);
        }
        // At a delimiter: `--` closes the body, else optional padding and a line break.
        let d = self.delimiter.len();
        if !self.want(d + 2)? {
            return Err(self.cut_short("inside a boundary line"));
        }
        if self.available()[..d] != self.delimiter[..] {
            return malformed("a part's body is not followed by the boundary");
        }
        self.pos += d;
        if self.available().starts_with(b"--") {
            self.state = State::Done;
            return Ok(None);
        }
        loop {
            if !self.want(1)? {
                return Err(self.cut_short("inside a boundary line"));
            }
            match self.available()[0] {
                b' ' | b'\t' => self.pos += 1,
                _ => break,
            }
        }
        // Headers: from this line break to the first empty line (none at all is "\r\n\r\n").
        let headers_end = loop {
            if let Some(i) = memmem::find(self.available(), b"\r\n\r\n") {
                break i;
            }
            if self.available().len() > MAX_HEADER_BYTES {
                return malformed(format!("a part's headers run past {MAX_HEADER_BYTES} bytes"));
            }
            if !self.fill()? {
                return Err(self.cut_short("inside a part's headers"));
            }
        };
        if !self.available().starts_with(b"\r\n") {
            return malformed("a boundary line is not followed by a line break");
        }
        // `headers_end` is 0 for a part with no headers (the boundary line's break is the
        // first half of the "\r\n\r\n").
        let headers = String::from_utf8_lossy(self.available().get(2..headers_end).unwrap_or_default()).into_owned();
        self.pos += headers_end + 4;
        let (mut content_type, mut content_length) = (None, None);
        for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return malformed(format!("a part's header line has no ':' ({} bytes)", line.len()));
            };
            let value = value.trim();
            if name.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_owned());
            } else if name.trim().eq_ignore_ascii_case("content-length") {
                let n: u64 = value.parse().map_err(|_| MultipartError::Malformed(format!("a part's Content-Length is '{value}'")))?;
                content_length = Some(n);
            }
        }
        let body = match content_length {
            Some(n) if n > max_bytes => return malformed(format!("a part of {n} bytes is over the limit of {max_bytes} bytes")),
            Some(n) => self.read_exact_body(n as usize)?,
            None => self.scan_body(max_bytes)?,
        };
        self.state = State::AtDelimiter;
        Ok(Some(Part { content_type, body }))
    }

    /// Whether the close delimiter comes next (nothing more after the part read last). Only
    /// the delimiter is read: a further part's body is not.
    pub fn at_close(&mut self) -> Result<bool, MultipartError> {
        if self.state == State::Start {
            self.skip_preamble()?;
        }
        if self.state == State::Done {
            return Ok(true);
        }
        let d = self.delimiter.len();
        if !self.want(d + 2)? {
            return Err(self.cut_short("inside a boundary line"));
        }
        if self.available()[..d] != self.delimiter[..] {
            return malformed("a part's body is not followed by the boundary");
        }
        Ok(&self.available()[d..d + 2] == b"--")
    }

    fn skip_preamble(&mut self) -> Result<(), MultipartError> {
        let mut from = 0;
        loop {
            if let Some(i) = memmem::find(&self.available()[from..], &self.delimiter) {
                self.pos += from + i;
                self.state = State::AtDelimiter;
                return Ok(());
            }
            from = self.available().len().saturating_sub(self.delimiter.len() - 1);
            if self.available().len() > MAX_PREAMBLE_BYTES {
                return malformed(format!("no boundary in the first {MAX_PREAMBLE_BYTES} bytes"));
            }
            if !self.fill()? {
                return malformed("the body holds no boundary");
            }
        }
    }

    /// `n` bytes of body, straight from the reader into their buffer. The buffer grows as
    /// bytes arrive: a `Content-Length` alone (the server's word) reserves at most
    /// [`MAX_RESERVE`].
    fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, MultipartError> {
        let buffered = self.available().len().min(n);
        let mut body = Vec::new();
        body.try_reserve(n.min(MAX_RESERVE))
            .map_err(|e| MultipartError::Io(io::Error::new(io::ErrorKind::OutOfMemory, format!("a part of {n} bytes: {e}"))))?;
        body.extend_from_slice(&self.available()[..buffered]);
        self.pos += buffered;
        if body.len() < n {
            (&mut self.inner).take((n - body.len()) as u64).read_to_end(&mut body)?;
            if body.len() < n {
                self.eof = true;
                return Err(self.cut_short(&format!("after {} of a part's {n} bytes", body.len())));
            }
        }
        Ok(body)
    }

    /// The bytes up to the next delimiter.
    fn scan_body(&mut self, max_bytes: u64) -> Result<Vec<u8>, MultipartError> {
        let mut from = 0;
        loop {
            if let Some(i) = memmem::find(&self.available()[from..], &self.delimiter) {
                let end = from + i;
                if end as u64 > max_bytes {
                    return malformed(format!("a part of {end} bytes is over the limit of {max_bytes} bytes"));
                }
                // The body is the front of the buffer: split it off rather than copy it.
                let rest = self.buf.split_off(self.pos + end);
                let mut body = std::mem::replace(&mut self.buf, rest);
                body.drain(..self.pos);
                self.pos = 0;
                return Ok(body);
            }
            from = self.available().len().saturating_sub(self.delimiter.len() - 1);
            if from as u64 > max_bytes {
                return malformed(format!("a part is over the limit of {max_bytes} bytes"));
            }
            if !self.fill()? {
                return Err(self.cut_short("inside a part (no boundary after it)"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per read, so boundaries straddle reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn parts(body: &[u8], boundary: &str, step: usize, max: u64) -> Result<Vec<Part>, MultipartError> {
        let mut r = MultipartReader::new(Trickle { data: body, step }, boundary);
        let mut out = Vec::new();
        while let Some(p) = r.next_part(max)? {
            out.push(p);
        }
        Ok(out)
    }

    fn body(boundary: &str, parts: &[(&[u8], bool)], preamble: &str) -> Vec<u8> {
        let mut b = preamble.as_bytes().to_vec();
        for (i, (data, with_length)) in parts.iter().enumerate() {
            if i > 0 || !preamble.is_empty() {
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/dicom\r\n").as_bytes());
            if *with_length {
                b.extend_from_slice(format!("Content-Length: {}\r\n", data.len()).as_bytes());
            }
            b.extend_from_slice(b"MIME-Version: 1.0\r\n\r\n");
            b.extend_from_slice(data);
        }
        b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        b
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(boundary("multipart/related; type=\"application/dicom\"; boundary=abc-1").unwrap(), "abc-1");
        assert_eq!(boundary("Multipart/Related;boundary=\"a;b c\";type=application/dicom").unwrap(), "a;b c");
        assert!(boundary("application/dicom+json").unwrap_err().contains("not multipart/related"));
        assert!(boundary("multipart/related; type=application/dicom").unwrap_err().contains("no boundary"));
    }

    #[test]
    fn parts_with_and_without_length_survive_any_read_size() {
        // Bodies that hold the boundary's text without the CRLF before it, and near misses.
        let b = "77ed5565-5cf1";
        let one: Vec<u8> =
            (0..5000u32).flat_map(|i| (i as u8).to_le_bytes()).chain(b"--77ed5565-5cf1 \n\r\n--77ed".iter().copied()).collect();
        let two = b"\r\n--77ed5565-5cf\r\n".to_vec();
        for preamble in ["", "ignored preamble text"] {
            for with_length in [true, false] {
                let data = body(b, &[(&one, with_length), (&two, with_length), (b"", with_length)], preamble);
                for step in [1, 7, 4096, 1 << 20] {
                    let got = parts(&data, b, step, 1 << 20).unwrap();
                    assert_eq!(got.len(), 3, "step {step}");
                    assert_eq!(got[0].body, one);
                    assert_eq!(got[1].body, two);
                    assert!(got[2].body.is_empty());
                    assert_eq!(got[0].content_type.as_deref(), Some("application/dicom"));
                }
            }
        }
    }

    #[test]
    fn parts_without_headers_survive_any_read_size() {
        // `--b\r\n\r\n<body>`: no header lines at all (RFC 2046 allows it).
        let data = b"--b\r\n\r\nfirst\r\n--b\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b\r\n\r\n\r\n--b--\r\n";
        for step in [1, 2, 3, 7, 4096] {
            let got = parts(data, "b", step, 100).unwrap();
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!((got[0].content_type.as_deref(), &got[0].body[..]), (None, &b"first"[..]));
            assert_eq!((got[1].content_type.as_deref(), &got[1].body[..]), (Some("application/dicom"), &b"second"[..]));
            assert_eq!((got[2].content_type.as_deref(), &got[2].body[..]), (None, &b""[..]));
        }
    }

    #[test]
    fn at_close_tells_a_second_part_without_reading_it() {
        let b = "q";
        let one = body(b, &[(b"abc", true)], "");
        let mut r = MultipartReader::new(Trickle { data: &one, step: 2 }, b);
        r.next_part(100).unwrap().unwrap();
        assert!(r.at_close().unwrap());
        // A second part far over the limit: at_close answers from its boundary line alone.
        let big = vec![7u8; 1 << 20];
        let two = body(b, &[(b"abc", false), (&big, false)], "");
        let mut r = MultipartReader::new(Trickle { data: &two, step: 4096 }, b);
        r.next_part(100).unwrap().unwrap();
        assert!(!r.at_close().unwrap());
        assert!(r.buf.len() < 3 * 4096, "read {} bytes ahead", r.buf.len());
    }

    #[test]
    fn a_huge_content_length_reserves_little() {
        // 2^62 bytes announced: reserving them up front aborts the process.
        let b = "z";
        let data = b"--z\r\nContent-Length: 4611686018427387904\r\n\r\nshort".to_vec();
        let mut r = MultipartReader::new(Trickle { data: &data, step: 3 }, b);
        match r.next_part(u64::MAX) {
            Err(MultipartError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cut_malformed_and_oversized_bodies_are_errors() {
        let b = "xyz";
        let data = body(b, &[(b"0123456789", true)], "");
        // Cut anywhere before the close delimiter: an I/O error (worth a retry), never a panic.
        for cut in 0..data.len() - 4 {
            match parts(&data[..cut], b, 3, 100) {
                Err(MultipartError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}"),
                Err(MultipartError::Malformed(m)) => assert!(cut < 7 && m.contains("no boundary"), "cut {cut}: {m}"),
                Ok(p) => panic!("cut at {cut} read {} parts", p.len()),
            }
        }
        let e = parts(&data, b, 5, 9).unwrap_err().to_string();
        assert!(e.contains("10 bytes is over the limit of 9"), "{e}");
        let scanned = body(b, &[(b"0123456789", false)], "");
        assert!(parts(&scanned, b, 5, 9).unwrap_err().to_string().contains("over the limit of 9"));
        // A Content-Length that disagrees with where the boundary is.
        let lying = String::from_utf8(data.clone()).unwrap().replace("Content-Length: 10", "Content-Length: 8");
        assert!(parts(lying.as_bytes(), b, 4, 100).unwrap_err().to_string().contains("not followed by the boundary"));
        let bad_len = String::from_utf8(data).unwrap().replace("Content-Length: 10", "Content-Length: ten");
        assert!(parts(bad_len.as_bytes(), b, 4, 100).unwrap_err().to_string().contains("Content-Length is 'ten'"));
        assert!(parts(b"no multipart here", b, 4, 100).unwrap_err().to_string().contains("no boundary"));
    }
}
