//! One JSON array of objects, read an element at a time.
//!
//! A small scanner finds where each element ends (a `,` or the closing `]` outside any string
//! and any nested array or object) and hands just that element to `serde_json`, so the array
//! is never held whole. The scanner checks the structure, brackets matched, strings closed,
//! nothing after the `]`, because a broken structure leaves no trustworthy way to find the
//! next element: that is fatal. What is wrong *inside* one element (bad JSON, not an object,
//! too large) spoils only that element.

use super::input::Input;
use super::{bad_row, json_row, push_capped, show_byte, too_large, Format, ReadError, Row};

/// How deep the scanner remembers which bracket opened each level, to check the closing one.
/// Deeper levels are only counted: `serde_json` refuses elements nested beyond 128 anyway,
/// and remembering each level of a hostile `[[[[...` would cost memory without bound.
const CHECKED_DEPTH: usize = 1024;

#[derive(Clone, Copy)]
enum Stage {
    /// Before the opening `[`.
    Start,
    /// Inside the array, before an element (`first`: right after the `[`, where `]` may come).
    Open { first: bool },
    /// After the closing `]`: only whitespace may follow.
    Closed,
}

pub(super) struct JsonArray {
    stage: Stage,
    /// Elements begun so far; the current one's 1-based index.
    index: u64,
    /// The current element, never longer than `max`.
    buf: Vec<u8>,
    /// Brackets open inside the current element, the first `CHECKED_DEPTH` of them.
    opened: Vec<u8>,
    max: usize,
}

/// What ended an element.
enum End {
    /// A `,` at this offset in the buffered input: more elements follow.
    Comma(usize),
    /// The array's closing `]` at this offset.
    Close(usize),
}

impl JsonArray {
    pub(super) fn new(max: usize) -> Self {
        Self {
            stage: Stage::Start,
            index: 0,
            buf: Vec::new(),
            opened: Vec::new(),
            max,
        }
    }

    pub(super) fn next(&mut self, input: &mut Input) -> Option<Result<Row, ReadError>> {
        loop {
            let place = Format::JsonArray.locate(self.index.max(1));
            let next = match skip_whitespace(input) {
                Ok(next) => next,
                Err(e) => return Some(Err(input.fatal(e, &place))),
            };
            let at = input.offset();
            match (self.stage, next) {
                (Stage::Start, None) => {
                    return Some(Err(fatal("the input is empty: expected a JSON array")));
                }
                (Stage::Start, Some(b'[')) => {
                    input.consume(1);
                    self.stage = Stage::Open { first: true };
                }
                (Stage::Start, Some(byte)) => {
                    return Some(Err(fatal(format!(
                        "expected a JSON array (`[`) at byte {at}, found {}; a file of one \
                         object per line is JSON Lines (name it .jsonl or set its format)",
                        show_byte(byte)
                    ))));
                }
                (Stage::Open { .. }, None) => {
                    return Some(Err(fatal(format!(
                        "the input ends after element {} without the array's closing `]` \
                         (truncated?)",
                        self.index
                    ))));
                }
                (Stage::Open { first: true }, Some(b']')) => {
                    input.consume(1);
                    self.stage = Stage::Closed;
                }
                (Stage::Open { .. }, Some(_)) => return Some(self.element(input)),
                (Stage::Closed, None) => return None,
                (Stage::Closed, Some(byte)) => {
                    return Some(Err(fatal(format!(
                        "unexpected {} at byte {at} after the array's closing `]`",
                        show_byte(byte)
                    ))));
                }
            }
        }
    }

    /// Scans one element from its first byte to its `,` or the closing `]`, and parses it.
    fn element(&mut self, input: &mut Input) -> Result<Row, ReadError> {
        self.index += 1;
        let index = self.index;
        self.buf.clear();
        self.opened.clear();
        let mut depth: usize = 0;
        let mut in_string = false;
        let mut escaped = false;
        let mut fits = true;
        loop {
            let base = input.offset();
            let available = match input.fill() {
                Ok(available) => available,
                Err(e) => return Err(input.fatal(e, &Format::JsonArray.locate(index))),
            };
            if available.is_empty() {
                let inside = if in_string { "a string in " } else { "" };
                return Err(fatal(format!(
                    "the input ends inside {inside}element {index}: the array is truncated"
                )));
            }
            let mut end = None;
            for (i, &byte) in available.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match byte {
                    b'"' => in_string = true,
                    b'[' | b'{' => {
                        if depth < CHECKED_DEPTH {
                            self.opened.push(byte);
                        }
                        depth += 1;
                    }
                    b']' | b'}' if depth == 0 => {
                        if byte == b'}' {
                            return Err(fatal(format!(
                                "malformed array: `}}` at byte {} closes nothing in element \
                                 {index}",
                                base + i as u64
                            )));
                        }
                        end = Some(End::Close(i));
                        break;
                    }
                    b']' | b'}' => {
                        if depth <= CHECKED_DEPTH {
                            let open = self.opened.pop();
                            let expected = if byte == b']' { b'[' } else { b'{' };
                            if open != Some(expected) {
                                return Err(fatal(format!(
                                    "malformed array: {} at byte {} does not match the \
                                     bracket it closes in element {index}",
                                    show_byte(byte),
                                    base + i as u64
                                )));
                            }
                        }
                        depth -= 1;
                    }
                    b',' if depth == 0 => {
                        end = Some(End::Comma(i));
                        break;
                    }
                    _ => {}
                }
            }
            let (taken, used) = match end {
                Some(End::Comma(i) | End::Close(i)) => (i, i + 1),
                None => (available.len(), available.len()),
            };
            // Past the cap, the element is still scanned to its end but not kept.
            fits &= push_capped(&mut self.buf, &available[..taken], self.max);
            input.consume(used);
            match end {
                None => continue,
                Some(End::Comma(_)) => self.stage = Stage::Open { first: false },
                Some(End::Close(_)) => self.stage = Stage::Closed,
            }
            if !fits {
                return Err(bad_row(Format::JsonArray, index, too_large(self.max)));
            }
            let text = self.buf.trim_ascii_end();
            if text.is_empty() {
                return Err(fatal(format!(
                    "malformed array: element {index} is missing (at byte {}: a `,` with \
                     nothing before it, or before the `]`)",
                    base + taken as u64
                )));
            }
            return json_row(Format::JsonArray, index, text);
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity() + self.opened.capacity()
    }
}

/// Consumes JSON whitespace; the next byte (not consumed), or `None` at the end of the input.
fn skip_whitespace(input: &mut Input) -> std::io::Result<Option<u8>> {
    loop {
        let available = input.fill()?;
        if available.is_empty() {
            return Ok(None);
        }
        match available
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            Some(i) => {
                let byte = available[i];
                input.consume(i);
                return Ok(Some(byte));
            }
            None => {
                let n = available.len();
                input.consume(n);
            }
        }
    }
}

fn fatal(message: impl Into<String>) -> ReadError {
    ReadError::Fatal(message.into())
}
