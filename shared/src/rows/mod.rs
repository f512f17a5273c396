//! Streaming row parsers: the rows of a target list, read from JSON Lines, a JSON array or CSV,
//! gzip-compressed or not (issue 25, "Targets are data").
//!
//! A list may hold a million rows and the producer runs in a 256 MB function, so a
//! [`RowReader`] never holds the input: it reads a fixed-size buffer at a time and keeps at
//! most one row, which it caps at `MAX_ROW_BYTES` (a message's size, [`crate::MAX_MESSAGE_BYTES`]). Where the rows come from (S3, HTTP, a
//! file, inline) is the caller's business: anything that is [`Read`] will do.
//!
//! # Where a row is
//! [`Row::line`] and [`ReadError::BadRow`] number rows the way a person finds them again:
//! - JSON Lines: the 1-based physical line (blank lines count, so it matches an editor);
//! - CSV: the 1-based physical line on which the record *starts* (the header is line 1; a
//!   quoted field with newlines makes the next record start further down);
//! - JSON array: the 1-based index of the element (line numbers mean little in a file that
//!   may be one line).
//!
//! [`Format::locate`] words it ("line 7", "element 7") for messages.
//!
//! # Bad rows and fatal errors
//! A [`ReadError::BadRow`] spoils one row and reading goes on with the next, so the caller
//! decides whether a bad row is skipped (and counted) or fails the tick. A
//! [`ReadError::Fatal`] means the rest of the input cannot be trusted (an I/O error, corrupt or
//! truncated gzip, a JSON array whose structure is broken, a CSV without a usable header, a
//! quote never closed): it is the iterator's last item.

mod csv;
mod input;
mod json_array;
mod jsonl;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::MAX_MESSAGE_BYTES;
use input::Input;

/// The largest row a reader accepts, in bytes: a line without its line ending (JSON Lines), an
/// element's text (JSON array), a record's values (CSV).
///
/// It is the SNS message limit: a row larger than that cannot become a job message anyway,
/// and the cap is what keeps a reader's memory bounded whatever the input holds (a file with no
/// newline, a quote never closed).
pub(crate) const MAX_ROW_BYTES: usize = MAX_MESSAGE_BYTES;

/// How the rows of a list are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// JSON Lines (`.jsonl`, `.ndjson`): one object per line.
    #[serde(rename = "jsonl", alias = "ndjson")]
    Jsonl,
    /// One JSON array of objects (`.json`).
    #[serde(rename = "json")]
    JsonArray,
    /// CSV with a header row (`.csv`); every value is a string.
    #[serde(rename = "csv")]
    Csv,
}

impl Format {
    /// The format a name implies by its extension: `.jsonl`, `.ndjson`, `.json` or `.csv`,
    /// each optionally followed by `.gz`, in any case. `None` when the name does not tell.
    ///
    /// The name may be an S3 key, a path or a URL; a URL's query and fragment are ignored
    /// (a presigned URL ends in its signature, not in its extension).
    pub fn from_name(name: &str) -> Option<Format> {
        let name = strip_url_tail(name).to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let (_, extension) = name.rsplit_once('.')?;
        match extension {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::JsonArray),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// The format to read `name` with: `explicit` when the config sets one (a list whose name
    /// says nothing, or says something wrong), else what [`Format::from_name`] finds.
    pub fn resolve(explicit: Option<Format>, name: &str) -> Result<Format, FormatError> {
        explicit
            .or_else(|| Format::from_name(name))
            .ok_or_else(|| FormatError::Unnamed(name.to_owned()))
    }

    /// Where row `n` is, in this format's words: "line 7" (JSON Lines, CSV) or "element 7"
    /// (JSON array). See [`Row::line`].
    pub fn locate(self, n: u64) -> String {
        match self {
            Format::Jsonl | Format::Csv => format!("line {n}"),
            Format::JsonArray => format!("element {n}"),
        }
    }
}

/// Why a list's format is not known: the reader would have to guess, and a wrong guess reads
/// every row as bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The list's name (a path, an S3 key, a URL) does not tell, and no format is set.
    #[error(
        "cannot tell the row format of `{0}` from its name (expected .jsonl, .ndjson, .json or \
         .csv, optionally followed by .gz): set its format"
    )]
    Unnamed(String),
    /// A format name that is none of the config's.
    #[error("unknown row format {0:?} (expected jsonl, ndjson, json or csv)")]
    Unknown(String),
}

impl FromStr for Format {
    type Err = FormatError;

    /// The names a config uses: `jsonl` (or `ndjson`), `json` (an array), `csv`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "json" => Ok(Format::JsonArray),
            "csv" => Ok(Format::Csv),
            _ => Err(FormatError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jsonl => "jsonl",
            Format::JsonArray => "json",
            Format::Csv => "csv",
        })
    }
}

/// Whether a list is declared gzip-compressed: its name ends in `.gz` (any case; a URL's query
/// is ignored) or its `Content-Encoding` (S3 object metadata, an HTTP header) says `gzip` or
/// `x-gzip`.
///
/// A [`RowReader`] also recognises gzip by its magic bytes, so an undeclared gzip body is
/// still read; a declared one that is not gzip is a fatal error rather than a guess.
pub fn is_gzip(name: &str, content_encoding: Option<&str>) -> bool {
    let by_name = strip_url_tail(name).to_ascii_lowercase().ends_with(".gz");
    let by_encoding = content_encoding.is_some_and(|encoding| {
        encoding.split(',').any(|token| {
            let token = token.trim();
            token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip")
        })
    });
    by_name || by_encoding
}

/// A URL without its query and fragment; any other name as it is (an S3 key may hold `?`).
fn strip_url_tail(name: &str) -> &str {
    if !name.contains("://") {
        return name;
    }
    let end = name.find(['?', '#']).unwrap_or(name.len());
    &name[..end]
}

/// One row of a list: the values a template's placeholders are filled from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where the row is: the 1-based physical line (JSON Lines; CSV: the line its record
    /// starts on) or the 1-based element index (JSON array). See the module doc.
    pub line: u64,
    /// The row's fields. JSON rows keep their JSON types; CSV values are all strings.
    pub values: Map<String, Value>,
}

/// Why a row, or the rest of the input, could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// One row is unusable (not an object, not valid JSON, a ragged CSV record, invalid UTF-8,
    /// larger than the cap). The reader has skipped it and goes on with the next row.
    #[error("{}: {problem}", format.locate(*line))]
    BadRow {
        /// The format, which words where the row is.
        format: Format,
        /// Where the row is, as [`Row::line`].
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// The input cannot be read on: nothing after this error is trustworthy, and the iterator
    /// ends. The message says where it stopped.
    #[error("{0}")]
    Fatal(String),
}

impl ReadError {
    /// Whether this error ended the reading (as opposed to spoiling one row).
    pub fn is_fatal(&self) -> bool {
        matches!(self, ReadError::Fatal(_))
    }
}

/// The rows of one list, read as they are needed.
///
/// An iterator of rows and [`ReadError`]s; after a fatal error (or the end of the input) it
/// yields nothing more. Memory stays within a read buffer, one row of at most
/// `MAX_ROW_BYTES` and the gzip decoder's window, whatever the size of the input.
pub struct RowReader {
    format: Format,
    declared_gzip: bool,
    max_row_bytes: usize,
    state: State,
}

/// The settings, not the input: a reader's position is in the stream it wraps.
impl fmt::Debug for RowReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowReader")
            .field("format", &self.format)
            .field("declared_gzip", &self.declared_gzip)
            .field("max_row_bytes", &self.max_row_bytes)
            .finish_non_exhaustive()
    }
}

enum State {
    /// Not yet read: the gzip sniff needs the first bytes, and an error there belongs in the
    /// iteration, not in the constructor.
    Unopened(Box<dyn Read + Send>),
    Open(Input, Parser),
    Done,
}

enum Parser {
    Jsonl(jsonl::Jsonl),
    JsonArray(json_array::JsonArray),
    Csv(csv::Csv),
}

impl RowReader {
    /// A reader of `input` in `format`. `declared_gzip` (see [`is_gzip`]) says the input must be
    /// gunzipped; an input that starts with the gzip magic bytes is gunzipped either way.
    pub fn new(input: Box<dyn Read + Send>, format: Format, declared_gzip: bool) -> Self {
        Self {
            format,
            declared_gzip,
            max_row_bytes: MAX_ROW_BYTES,
            state: State::Unopened(input),
        }
    }

    /// Lowers (or raises) the row cap from `MAX_ROW_BYTES`: a producer that knows its
    /// template adds bytes to every row may want to refuse rows earlier.
    pub fn with_max_row_bytes(mut self, max_row_bytes: usize) -> Self {
        self.max_row_bytes = max_row_bytes.max(1);
        self
    }

    /// Sniffs gzip, strips a byte order mark and sets the parser up.
    fn open(&self, mut raw: Box<dyn Read + Send>) -> Result<(Input, Parser), ReadError> {
        let mut magic = [0u8; 2];
        let sniffed = read_up_to(&mut raw, &mut magic)
            .map_err(|e| ReadError::Fatal(format!("cannot read the input: {e}")))?;
        let magic = &magic[..sniffed];
        let gzip = magic == GZIP_MAGIC;
        if self.declared_gzip && !gzip {
            return Err(ReadError::Fatal(
                "the input is declared gzip (by its .gz name or Content-Encoding) but does not \
                 start with the gzip magic bytes"
                    .into(),
            ));
        }
        let replay = io::Cursor::new(magic.to_vec()).chain(raw);
        let decoded: Box<dyn Read + Send> = if gzip {
            // Multi-member: `cat a.gz b.gz` is valid gzip, and some writers produce it.
            Box::new(flate2::read::MultiGzDecoder::new(replay))
        } else {
            Box::new(replay)
        };
        let mut input = Input::new(decoded, gzip);
        input
            .skip_bom()
            .map_err(|e| input.fatal(e, &self.format.locate(1)))?;
        let max = self.max_row_bytes;
        let parser = match self.format {
            Format::Jsonl => Parser::Jsonl(jsonl::Jsonl::new(max)),
            Format::JsonArray => Parser::JsonArray(json_array::JsonArray::new(max)),
            Format::Csv => Parser::Csv(csv::Csv::new(max)),
        };
        Ok((input, parser))
    }

    /// Bytes this reader holds at most so far: its read buffer plus the capacity of its row
    /// buffers (which only grow), for the tests that prove it streams.
    #[cfg(test)]
    fn buffered_high_water(&self) -> usize {
        match &self.state {
            State::Open(input, parser) => {
                input.capacity()
                    + match parser {
                        Parser::Jsonl(p) => p.capacity(),
                        Parser::JsonArray(p) => p.capacity(),
                        Parser::Csv(p) => p.capacity(),
                    }
            }
            _ => 0,
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads until `buf` is full or the input ends; the count read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Iterator for RowReader {
    type Item = Result<Row, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let State::Unopened(_) = self.state {
            let State::Unopened(raw) = std::mem::replace(&mut self.state, State::Done) else {
                return None;
            };
            match self.open(raw) {
                Ok((input, parser)) => self.state = State::Open(input, parser),
                Err(e) => return Some(Err(e)),
            }
        }
        let State::Open(input, parser) = &mut self.state else {
            return None;
        };
        let item = match parser {
            Parser::Jsonl(p) => p.next(input),
            Parser::JsonArray(p) => p.next(input),
            Parser::Csv(p) => p.next(input),
        };
        if matches!(item, None | Some(Err(ReadError::Fatal(_)))) {
            self.state = State::Done;
        }
        item
    }
}

/// A bad row of `format` at `line`.
fn bad_row(format: Format, line: u64, problem: impl Into<String>) -> ReadError {
    ReadError::BadRow {
        format,
        line,
        problem: problem.into(),
    }
}

/// The problem with a row that is not larger than the cap.
fn too_large(max: usize) -> String {
    format!("the row is larger than {max} bytes (the limit of one message)")
}

/// A parsed JSON row, or why it is not one: JSON Lines and arrays share it.
fn json_row(format: Format, line: u64, text: &[u8]) -> Result<Row, ReadError> {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(values)) => Ok(Row { line, values }),
        Ok(other) => Err(bad_row(
            format,
            line,
            format!("expected an object, got {}", json_kind(&other)),
        )),
        Err(e) => Err(bad_row(format, line, format!("not valid JSON: {e}"))),
    }
}

/// "a number", "an array": what a JSON value is, for messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A byte as a message shows it: "`x`" if printable ASCII, else its hex value.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("`{}`", byte as char)
    } else {
        format!("byte 0x{byte:02x}")
    }
}

/// Appends what fits of `bytes` to `buf` without ever letting it grow past `max`; false when
/// something did not fit (the row is too large). Growth is capped too, so a buffer's capacity
/// never exceeds the cap however the rows arrive.
fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], max: usize) -> bool {
    let take = bytes.len().min(max.saturating_sub(buf.len()));
    let needed = buf.len() + take;
    if needed > buf.capacity() {
        let target = (buf.capacity() * 2).max(needed).max(256).min(max);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(&bytes[..take]);
    take == bytes.len()
}
