//! CSV with a header row (RFC 4180): a state machine over bytes, so it can stop keeping a
//! record that grows past the cap yet still follow its quotes to where it really ends, and so
//! it knows the physical line each record starts on. (The `csv` crate's reader keeps a record
//! however long it grows: an unclosed quote would hold the rest of the input.)
//!
//! Accepted as RFC 4180 says: `,` separators, `"`-quoted fields holding `,`, `""` (one quote)
//! and line breaks; `\n` or `\r\n` line ends; blank lines skipped. Lenient where common
//! writers are sloppy, like Python's `csv` and Rust's `csv` crates: a `"` inside an unquoted
//! field is kept as it is, and so is text after a closing quote (`"a"b` reads `ab`).
//!
//! Every value is a string; a field that is not valid UTF-8 spoils its row, naming the line
//! and the column (never replaced with U+FFFD: a placeholder must not silently become
//! something else).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::input::Input;
use super::{bad_row, push_capped, too_large, Format, ReadError, Row};

/// The most columns a header may name. Each costs the reader a slot per row, and a "header"
/// of a million commas is a wrong file, not a list.
const MAX_COLUMNS: usize = 4096;

/// Why a CSV header cannot name the columns: every row is read by column name, so the whole
/// input is refused (a fatal error naming the header's line).
#[derive(Debug, thiserror::Error)]
enum HeaderError {
    /// Larger than the row cap.
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    /// More than [`MAX_COLUMNS`].
    #[error("more than {MAX_COLUMNS} columns")]
    TooManyColumns,
    /// A column's name (1-based) is not UTF-8.
    #[error("column {0}'s name is not valid UTF-8")]
    NotUtf8(usize),
    /// A column (1-based) without a name.
    #[error("column {0} has no name (every column needs one: rows are read by column name)")]
    Unnamed(usize),
    /// A name used twice: a row's value for it would be ambiguous.
    #[error("column `{name}` appears twice (columns {first} and {column})")]
    Twice {
        /// The name.
        name: String,
        /// The first column with it.
        first: usize,
        /// The second.
        column: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing of a record read yet; a line break here is a blank line.
    RecordStart,
    /// At the start of a field after a `,`.
    FieldStart,
    /// In an unquoted field.
    Unquoted,
    /// In a quoted field.
    Quoted,
    /// Just after a `"` in a quoted field: a second `"` (a literal quote) or the field's end.
    QuoteInQuoted,
}

pub(super) struct Csv {
    header: Option<Vec<String>>,
    state: State,
    /// A `\r` outside quotes that ends the line if a `\n` follows, else is data.
    pending_cr: bool,
    /// Line breaks consumed so far (inside quotes too).
    lines: u64,
    /// The line the current record starts on.
    start: u64,
    /// The current record's values, back to back, never longer than `max`.
    record: Vec<u8>,
    /// Where each completed field ends in `record`; only as many as the header has columns
    /// (plus one), since a record with more fields is ragged whatever they hold.
    ends: Vec<usize>,
    /// Fields completed in the current record.
    fields: usize,
    fits: bool,
    max: usize,
}

impl Csv {
    pub(super) fn new(max: usize) -> Self {
        Self {
            header: None,
            state: State::RecordStart,
            pending_cr: false,
            lines: 0,
            start: 0,
            record: Vec::new(),
            ends: Vec::new(),
            fields: 0,
            fits: true,
            max,
        }
    }

    pub(super) fn next(&mut self, input: &mut Input) -> Option<Result<Row, ReadError>> {
        loop {
            let available = match input.fill() {
                Ok(available) => available,
                Err(e) => {
                    let place = Format::Csv.locate(self.lines + 1);
                    return Some(Err(input.fatal(e, &place)));
                }
            };
            if available.is_empty() {
                // A final `\r` with nothing after it ends the line as `\r\n` would.
                self.pending_cr = false;
                match self.state {
                    State::RecordStart if self.header.is_none() => {
                        return Some(Err(ReadError::Fatal(
                            "no header row: the input is empty (a CSV list starts with a \
                             row of column names)"
                                .into(),
                        )));
                    }
                    State::RecordStart => return None,
                    State::Quoted => {
                        return Some(Err(ReadError::Fatal(format!(
                            "{}: a quoted field is never closed (the input ends inside it)",
                            Format::Csv.locate(self.start)
                        ))));
                    }
                    _ => {
                        // The last record, without a line break after it.
                        self.end_field();
                        match self.finish() {
                            Some(item) => return Some(item),
                            None => continue,
                        }
                    }
                }
            }
            let mut ended = None;
            for (i, &byte) in available.iter().enumerate() {
                if self.step(byte) {
                    ended = Some(i + 1);
                    break;
                }
            }
            match ended {
                Some(used) => {
                    input.consume(used);
                    if let Some(item) = self.finish() {
                        return Some(item);
                    }
                }
                None => {
                    let used = available.len();
                    input.consume(used);
                }
            }
        }
    }

    /// Takes one byte; true when it ends a record.
    fn step(&mut self, byte: u8) -> bool {
        if self.state == State::Quoted {
            if byte == b'"' {
                self.state = State::QuoteInQuoted;
            } else {
                if byte == b'\n' {
                    self.lines += 1;
                }
                self.push(byte);
            }
            return false;
        }
        if self.pending_cr {
            self.pending_cr = false;
            if byte == b'\n' {
                return self.line_break();
            }
            self.data(b'\r');
        }
        match (self.state, byte) {
            (_, b'\r') => {
                self.pending_cr = true;
                false
            }
            (_, b'\n') => self.line_break(),
            (State::RecordStart | State::FieldStart, b'"') => {
                self.begin();
                self.state = State::Quoted;
                false
            }
            (State::QuoteInQuoted, b'"') => {
                self.push(b'"');
                self.state = State::Quoted;
                false
            }
            (_, b',') => {
                self.begin();
                self.end_field();
                self.state = State::FieldStart;
                false
            }
            _ => {
                self.data(byte);
                false
            }
        }
    }

    /// A line break outside quotes: the end of a record, or a blank line.
    fn line_break(&mut self) -> bool {
        self.lines += 1;
        if self.state == State::RecordStart {
            return false;
        }
        self.end_field();
        true
    }

    /// Notes where a record starts, at its first byte.
    fn begin(&mut self) {
        if self.state == State::RecordStart {
            self.start = self.lines + 1;
            self.state = State::FieldStart;
        }
    }

    /// A byte of an unquoted field (or after a closing quote).
    fn data(&mut self, byte: u8) {
        self.begin();
        self.state = State::Unquoted;
        self.push(byte);
    }

    fn push(&mut self, byte: u8) {
        self.fits &= push_capped(&mut self.record, &[byte], self.max);
    }

    fn end_field(&mut self) {
        let keep = match &self.header {
            Some(header) => header.len() + 1,
            None => MAX_COLUMNS + 1,
        };
        if self.ends.len() < keep {
            self.ends.push(self.record.len());
        }
        self.fields += 1;
    }

    /// Turns the record just ended into the header or a row, and makes ready for the next.
    /// `None` after the header: there is no row to yield yet.
    fn finish(&mut self) -> Option<Result<Row, ReadError>> {
        let line = self.start;
        let item = match &self.header {
            None => match self.header_names() {
                Ok(names) => {
                    self.header = Some(names);
                    None
                }
                Err(problem) => Some(Err(ReadError::Fatal(format!(
                    "header ({}): {problem}",
                    Format::Csv.locate(line)
                )))),
            },
            Some(header) => Some(self.row(header, line)),
        };
        self.state = State::RecordStart;
        self.record.clear();
        self.ends.clear();
        self.fields = 0;
        self.fits = true;
        item
    }

    fn header_names(&self) -> Result<Vec<String>, HeaderError> {
        if !self.fits {
            return Err(HeaderError::TooLarge(self.max));
        }
        if self.fields > MAX_COLUMNS {
            return Err(HeaderError::TooManyColumns);
        }
        let mut names = Vec::with_capacity(self.fields);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut from = 0;
        for (index, &end) in self.ends.iter().enumerate() {
            let column = index + 1;
            let name = std::str::from_utf8(&self.record[from..end])
                .map_err(|_| HeaderError::NotUtf8(column))?;
            from = end;
            if name.is_empty() {
                return Err(HeaderError::Unnamed(column));
            }
            if let Some(first) = seen.insert(name, column) {
                return Err(HeaderError::Twice {
                    name: name.to_owned(),
                    first,
                    column,
                });
            }
            names.push(name.to_owned());
        }
        Ok(names)
    }

    fn row(&self, header: &[String], line: u64) -> Result<Row, ReadError> {
        if !self.fits {
            return Err(bad_row(Format::Csv, line, too_large(self.max)));
        }
        if self.fields != header.len() {
            let plural = if self.fields == 1 { "" } else { "s" };
            return Err(bad_row(
                Format::Csv,
                line,
                format!(
                    "{} field{plural} where the header has {} columns",
                    self.fields,
                    header.len()
                ),
            ));
        }
        let mut values = Map::new();
        let mut from = 0;
        for (name, &end) in header.iter().zip(&self.ends) {
            let value = std::str::from_utf8(&self.record[from..end]).map_err(|e| {
                bad_row(
                    Format::Csv,
                    line,
                    format!(
                        "column `{name}` is not valid UTF-8 (at byte {} of the value)",
                        e.valid_up_to()
                    ),
                )
            })?;
            from = end;
            values.insert(name.clone(), Value::String(value.to_owned()));
        }
        Ok(Row { line, values })
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.record.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }
}
