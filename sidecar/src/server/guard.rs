//! A framing guard under hyper's HTTP/1 parser: it reads each request head
//! before hyper does and turns the ambiguous ones into a plain parse error.
//!
//! Why here and not in a tower layer: hyper resolves a request carrying both
//! `Content-Length` and `Transfer-Encoding` itself (chunked wins, the length
//! is dropped from the header map, the connection closes afterwards). That is
//! safe, but the service never learns the request was ambiguous, and a
//! request-smuggling attempt deserves a 400, not a forwarded request. So the
//! guard follows the message framing of the byte stream (heads, fixed-length
//! bodies, chunked bodies) and, on a head with CL+TE or conflicting
//! Content-Lengths, hands hyper an unparseable request line instead: hyper
//! answers `400 Bad Request` and closes the connection.
//!
//! It also bounds the time a request head may take (slowloris), from its
//! first byte (or from the connection's start) to its end. hyper's own
//! `header_read_timeout` cannot do it: it starts only once hyper-util has
//! decided between HTTP/1 and HTTP/2, and it also runs while a keep-alive
//! connection is idle, closing healthy pooled connections.
//!
//! Anything it does not understand (an HTTP/2 preface, an upgrade, a
//! malformed head) switches it to pass-through, leaving the verdict to hyper.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// hyper rejects this request line with a 400 (an invalid method token).
const REJECT: &[u8] = b"\x00 / HTTP/1.1\r\n\r\n";
/// Chunk-size lines longer than this are not worth following.
const MAX_CHUNK_LINE: usize = 1024;
/// Header slots a head is parsed into without a heap allocation.
const STACK_HEADERS: usize = 128;

pub struct H1Guard<T> {
    inner: T,
    framing: Framing,
    /// Bytes checked and ready for hyper.
    out: BytesMut,
    scratch: Box<[u8]>,
    head_timeout: Duration,
    /// Armed while a head is incomplete (and for the first head from the start).
    head_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> H1Guard<T> {
    /// `max_head`: heads larger than this are left to hyper (which answers 431).
    /// `max_headers`: how many headers the guard parses before giving up likewise.
    /// `head_timeout`: a started head must be complete within this.
    pub fn new(inner: T, max_head: usize, max_headers: usize, head_timeout: Duration) -> Self {
        H1Guard {
            inner,
            framing: Framing::new(max_head, max_headers),
            out: BytesMut::new(),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            head_timeout,
            head_deadline: Some(Box::pin(tokio::time::sleep(head_timeout))),
        }
    }

    fn rearm(&mut self) {
        let waiting = self.framing.state == State::Head && !self.framing.held.is_empty();
        match (&self.head_deadline, waiting) {
            (None, true) => {
                let at = Instant::now() + self.head_timeout;
                self.head_deadline = Some(Box::pin(tokio::time::sleep_until(at)));
            }
            (Some(_), false) => self.head_deadline = None,
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(d) = this.head_deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                this.head_deadline = None;
                this.framing.state = State::Closed;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received in time",
                )));
            }
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.framing.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Passthrough if this.framing.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                State::Body(remaining) if this.framing.held.is_empty() && remaining > 0 => {
                    // Straight into hyper's buffer, never past the end of this body.
                    let limit = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    let mut sub = ReadBuf::new(buf.initialize_unfilled_to(limit));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                    let n = sub.filled().len();
                    buf.advance(n);
                    if n > 0 {
                        this.framing.consume_body(n as u64);
                    }
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let data = rb.filled();
            if data.is_empty() {
                // EOF: whatever was held goes to hyper, which judges an incomplete head.
                if this.framing.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.extend_from_slice(&this.framing.held);
                this.framing.held.clear();
                this.framing.state = State::Passthrough;
                this.head_deadline = None;
                continue;
            }
            this.framing.feed(data, &mut this.out);
            this.rearm();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Bytes left in a Content-Length body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk; the flag: the current line has content.
    Trailers(bool),
    /// Not following the framing any more: hyper decides.
    Passthrough,
    /// A rejected request was handed over; nothing after it is read.
    Closed,
}

/// The head/body framing tracker, free of I/O so it can be tested on bytes.
struct Framing {
    state: State,
    /// Bytes not yet released: an incomplete head or chunk-size line.
    held: Vec<u8>,
    max_head: usize,
    max_headers: usize,
}

enum Verdict {
    Reject,
    Next(State),
}

impl Framing {
    fn new(max_head: usize, max_headers: usize) -> Self {
        Framing {
            state: State::Head,
            held: Vec::new(),
            max_head,
            max_headers,
        }
    }

    fn consume_body(&mut self, n: u64) {
        if let State::Body(rem) = self.state {
            let rem = rem.saturating_sub(n);
            self.state = if rem == 0 {
                State::Head
            } else {
                State::Body(rem)
            };
        }
    }

    /// Takes newly read bytes; appends the ones hyper may see to `out`.
    fn feed(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.held.is_empty() {
            // The common case, a read that ends on a message boundary: no copy kept.
            let used = self.advance(data, out);
            if self.state != State::Closed {
                self.held.extend_from_slice(&data[used..]);
            }
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.extend_from_slice(data);
            let used = self.advance(&held, out);
            if self.state == State::Closed {
                held.clear();
            } else {
                held.drain(..used);
            }
            self.held = held;
        }
        if self.state == State::Head && self.held.len() > self.max_head {
            // Too big to judge: hyper's own limit answers 431.
            out.extend_from_slice(&self.held);
            self.held.clear();
            self.state = State::Passthrough;
        }
    }

    /// Follows the framing over `input`, appending what hyper may see to
    /// `out`; returns how many bytes it used (the rest is an incomplete head
    /// or chunk-size line, to be held). Once closed, everything is dropped.
    fn advance(&mut self, input: &[u8], out: &mut BytesMut) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Closed => return input.len(),
                State::Passthrough => {
                    out.extend_from_slice(rest);
                    pos = input.len();
                }
                State::Head => match self.check_head(rest) {
                    None => break,
                    Some((_, Verdict::Reject)) => {
                        out.extend_from_slice(REJECT);
                        self.state = State::Closed;
                        return input.len();
                    }
                    Some((len, Verdict::Next(next))) => {
                        out.extend_from_slice(&rest[..len]);
                        pos += len;
                        self.state = next;
                    }
                },
                State::Body(rem) => {
                    let n = (rest.len() as u64).min(rem) as usize;
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    self.consume_body(n as u64);
                }
                State::ChunkSize => match rest.iter().position(|b| *b == b'\n') {
                    None if rest.len() > MAX_CHUNK_LINE => self.state = State::Passthrough,
                    None => break,
                    Some(i) => {
                        let size = parse_chunk_size(&rest[..i]);
                        out.extend_from_slice(&rest[..=i]);
                        pos += i + 1;
                        self.state = match size {
                            None => State::Passthrough,
                            Some(0) => State::Trailers(false),
                            Some(n) => State::ChunkData(n),
                        };
                    }
                },
                State::ChunkData(rem) => {
                    let n = (rest.len() as u64).min(rem) as usize;
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    let rem = rem - n as u64;
                    self.state = if rem == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(rem)
                    };
                }
                State::ChunkEnd(k) => {
                    let n = rest.len().min(k as usize);
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    let k = k - n as u8;
                    self.state = if k == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(k)
                    };
                }
                State::Trailers(mut content) => {
                    let mut i = 0;
                    let mut done = false;
                    while i < rest.len() {
                        match rest[i] {
                            b'\n' if !content => {
                                done = true;
                                i += 1;
                                break;
                            }
                            b'\n' => content = false,
                            b'\r' => {}
                            _ => content = true,
                        }
                        i += 1;
                    }
                    out.extend_from_slice(&rest[..i]);
                    pos += i;
                    self.state = if done {
                        State::Head
                    } else {
                        State::Trailers(content)
                    };
                }
            }
        }
        pos
    }

    /// `None`: the head is incomplete. `Some((len, verdict))` otherwise; a
    /// head the guard cannot parse is passed through for hyper to judge.
    fn check_head(&self, bytes: &[u8]) -> Option<(usize, Verdict)> {
        // Up to STACK_HEADERS on the stack, uninitialised (httparse writes
        // before anything reads); a larger configured limit on the heap.
        let n = self.max_headers + 1;
        if n <= STACK_HEADERS {
            let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
            Self::judge_head(bytes, &mut headers[..n])
        } else {
            let mut headers = Vec::new();
            headers.resize_with(n, MaybeUninit::uninit);
            Self::judge_head(bytes, &mut headers)
        }
    }

    fn judge_head<'b>(
        bytes: &'b [u8],
        headers: &mut [MaybeUninit<httparse::Header<'b>>],
    ) -> Option<(usize, Verdict)> {
        // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(bytes, headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some((bytes.len(), Verdict::Next(State::Passthrough))),
        };
        let mut lengths: Vec<u64> = Vec::new();
        let mut chunked = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for part in h.value.split(|b| *b == b',') {
                    let text = std::str::from_utf8(part).unwrap_or("").trim();
                    match text.parse::<u64>() {
                        Ok(n) => lengths.push(n),
                        // hyper rejects an unparseable length itself.
                        Err(_) => return Some((len, Verdict::Next(State::Passthrough))),
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(|s| String::from_utf8_lossy(s).trim().to_ascii_lowercase());
                chunked = Some(last.as_deref() == Some("chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let conflicting = lengths.windows(2).any(|w| w[0] != w[1]);
        if conflicting || (chunked.is_some() && !lengths.is_empty()) {
            return Some((len, Verdict::Reject));
        }
        let next = match (chunked, lengths.first()) {
            _ if upgrade => State::Passthrough,
            (Some(true), _) => State::ChunkSize,
            (Some(false), _) => State::Passthrough,
            (None, Some(0)) | (None, None) => State::Head,
            (None, Some(n)) => State::Body(*n),
        };
        Some((len, Verdict::Next(next)))
    }
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let digits = text.split(';').next()?.trim();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, State) {
        let mut f = Framing::new(64 * 1024, 100);
        let mut out = BytesMut::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        (out.to_vec(), f.state)
    }

    #[test]
    fn passes_well_framed_pipelined_requests() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        // Byte by byte and all at once give the same stream.
        let (out, state) = run(&[input]);
        assert_eq!(out, input);
        assert_eq!(state, State::Head);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (out, state) = run(&bytes);
        assert_eq!(out, input);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn rejects_cl_and_te() {
        let (out, state) = run(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(out, REJECT);
        assert_eq!(state, State::Closed);
    }

    #[test]
    fn rejects_a_smuggled_second_request() {
        let (out, _) = run(&[
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ]);
        assert!(out.starts_with(b"GET / HTTP/1.1"));
        assert!(out.ends_with(REJECT));
    }

    #[test]
    fn rejects_conflicting_lengths() {
        let (out, _) = run(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"]);
        assert_eq!(out, REJECT);
        let (out, _) = run(&[b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n"]);
        assert_eq!(out, REJECT);
        // Repeated equal lengths are legal.
        let (out, state) =
            run(&[b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi"]);
        assert!(out.ends_with(b"hi"));
        assert_eq!(state, State::Head);
    }

    #[test]
    fn leaves_h2_preface_and_garbage_to_hyper() {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        let (out, state) = run(&[preface]);
        assert_eq!(out, preface);
        assert_eq!(state, State::Passthrough);
    }

    #[test]
    fn holds_an_incomplete_head() {
        let (out, state) = run(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]);
        assert!(out.is_empty());
        assert_eq!(state, State::Head);
    }
}
