//! The byte source under every parser: one fixed buffer over the (decoded) input.

use std::io::{self, Read};

use super::ReadError;

/// How much of the input is read at a time. Parsers look at what is buffered, take what they
/// need and consume it, so the input is never held beyond this and the current row.
const READ_BUFFER_BYTES: usize = 64 * 1024;

const BOM: &[u8] = b"\xef\xbb\xbf";

pub(super) struct Input {
    inner: Box<dyn Read + Send>,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Bytes consumed so far (of the decoded input), for messages that point into it.
    offset: u64,
    gzip: bool,
}

impl Input {
    pub(super) fn new(inner: Box<dyn Read + Send>, gzip: bool) -> Self {
        Self {
            inner,
            buf: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            len: 0,
            offset: 0,
            gzip,
        }
    }

    /// What is buffered, reading more if nothing is; empty at the end of the input.
    pub(super) fn fill(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len {
            match self.inner.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(&self.buf[self.pos..self.len])
    }

    /// Marks `n` buffered bytes as used.
    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.len);
        self.pos += n;
        self.offset += n as u64;
    }

    /// The offset of the next byte in the (decoded) input.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Skips a UTF-8 byte order mark at the very start, as spreadsheet exports and some
    /// Windows editors write; no parser should see it as data (a CSV's first column name, a
    /// JSON syntax error). Call before anything is consumed.
    pub(super) fn skip_bom(&mut self) -> io::Result<()> {
        while self.len < BOM.len() {
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => break,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.buf[..self.len].starts_with(BOM) {
            self.consume(BOM.len());
        }
        Ok(())
    }

    /// The fatal error for a failed read at `place` ("line 7", "element 3", ...).
    pub(super) fn fatal(&self, e: io::Error, place: &str) -> ReadError {
        let what = if self.gzip {
            "cannot read the gzip input"
        } else {
            "cannot read the input"
        };
        ReadError::Fatal(format!("{what} at {place}: {e}"))
    }

    /// The read buffer's size, for the streaming tests.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.len()
    }
}
