//! JSON Lines: one object per line; blank lines skipped; `\n` or `\r\n` line ends.

use super::input::Input;
use super::{bad_row, json_row, push_capped, too_large, Format, ReadError, Row};

pub(super) struct Jsonl {
    /// Lines consumed so far: the next line's number is one more.
    lines: u64,
    /// The current line, never longer than `max`.
    buf: Vec<u8>,
    max: usize,
}

impl Jsonl {
    pub(super) fn new(max: usize) -> Self {
        Self {
            lines: 0,
            buf: Vec::new(),
            max,
        }
    }

    pub(super) fn next(&mut self, input: &mut Input) -> Option<Result<Row, ReadError>> {
        loop {
            let line = self.lines + 1;
            self.buf.clear();
            let mut fits = true;
            let mut any = false;
            loop {
                let available = match input.fill() {
                    Ok(available) => available,
                    Err(e) => return Some(Err(input.fatal(e, &Format::Jsonl.locate(line)))),
                };
                if available.is_empty() {
                    break;
                }
                any = true;
                let newline = available.iter().position(|&b| b == b'\n');
                let end = newline.unwrap_or(available.len());
                // Past the cap, the rest of the line is consumed but not kept. One byte more
                // is kept for the `\r` of a CRLF ending, which is no part of the row.
                fits &= push_capped(&mut self.buf, &available[..end], self.max + 1);
                input.consume(newline.map_or(end, |at| at + 1));
                if newline.is_some() {
                    break;
                }
            }
            if !any {
                return None;
            }
            self.lines = line;
            if fits && self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            if !fits || self.buf.len() > self.max {
                return Some(Err(bad_row(Format::Jsonl, line, too_large(self.max))));
            }
            // Only a line of nothing but whitespace is blank.
            if self.buf.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                continue;
            }
            return Some(json_row(Format::Jsonl, line, &self.buf));
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}
