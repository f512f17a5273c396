use std::io::{self, Cursor, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A reader that hands out at most `step` bytes per call: every parser must give the same
/// answer however the input is cut, since network and gzip reads cut it anywhere.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn reader_over(format: Format, bytes: &[u8], step: usize) -> RowReader {
    let input = Trickle {
        data: bytes.to_vec(),
        pos: 0,
        step,
    };
    RowReader::new(Box::new(input), format, false)
}

/// Everything a reader yields, checked to be the same whether the input arrives whole, a byte
/// at a time or in odd pieces.
fn read_all(format: Format, bytes: &[u8]) -> Vec<Result<Row, ReadError>> {
    read_capped(format, bytes, MAX_ROW_BYTES)
}

fn read_capped(format: Format, bytes: &[u8], max: usize) -> Vec<Result<Row, ReadError>> {
    let whole: Vec<_> = reader_over(format, bytes, usize::MAX)
        .with_max_row_bytes(max)
        .collect();
    for step in [1, 2, 3, 7] {
        let cut: Vec<_> = reader_over(format, bytes, step)
            .with_max_row_bytes(max)
            .collect();
        assert_eq!(
            cut, whole,
            "reading {step} bytes at a time changed the result"
        );
    }
    whole
}

/// The rows as (line, object) pairs; fails on any error.
fn ok_rows(format: Format, bytes: &[u8]) -> Vec<(u64, Value)> {
    read_all(format, bytes)
        .into_iter()
        .map(|item| match item {
            Ok(row) => (row.line, Value::Object(row.values)),
            Err(e) => panic!("unexpected error: {e}"),
        })
        .collect()
}

/// Each item as a line of text: `3 {"a":1}`, `bad: line 4: ...` or `fatal: ...`.
fn outline(items: &[Result<Row, ReadError>]) -> Vec<String> {
    items
        .iter()
        .map(|item| match item {
            Ok(row) => format!("{} {}", row.line, Value::Object(row.values.clone())),
            Err(e @ ReadError::BadRow { .. }) => format!("bad: {e}"),
            Err(ReadError::Fatal(message)) => format!("fatal: {message}"),
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn is_fatal(item: Option<&Result<Row, ReadError>>) -> bool {
    matches!(item, Some(Err(e)) if e.is_fatal())
}

// ---------------------------------------------------------------------------------------------
// Format and gzip detection

#[test]
fn format_from_name_by_extension() {
    let cases = [
        ("rows.jsonl", Some(Format::Jsonl)),
        ("lists/2024/rows.ndjson", Some(Format::Jsonl)),
        ("rows.json", Some(Format::JsonArray)),
        ("rows.csv", Some(Format::Csv)),
        ("rows.jsonl.gz", Some(Format::Jsonl)),
        ("rows.json.gz", Some(Format::JsonArray)),
        ("ROWS.CSV.GZ", Some(Format::Csv)),
        ("/tmp/x.NDJSON", Some(Format::Jsonl)),
        (
            "https://h.example/export.csv?X-Amz-Signature=abc.json",
            Some(Format::Csv),
        ),
        (
            "https://h.example/export.jsonl#part.csv",
            Some(Format::Jsonl),
        ),
        ("rows.txt", None),
        ("rows.gz", None),
        ("rows", None),
        ("csv", None),
        ("rows.csv.zip", None),
        ("", None),
    ];
    for (name, expected) in cases {
        assert_eq!(Format::from_name(name), expected, "{name}");
    }
}

#[test]
fn format_resolve_prefers_the_explicit_format() {
    assert_eq!(
        Format::resolve(Some(Format::Csv), "rows.json"),
        Ok(Format::Csv)
    );
    assert_eq!(
        Format::resolve(Some(Format::Jsonl), "export"),
        Ok(Format::Jsonl)
    );
    assert_eq!(Format::resolve(None, "a.json.gz"), Ok(Format::JsonArray));
    let error = Format::resolve(None, "export.txt").unwrap_err().to_string();
    assert!(error.contains("`export.txt`"), "{error}");
    assert!(error.contains("set its format"), "{error}");
}

#[test]
fn format_names_in_a_config() {
    for (name, format) in [
        ("jsonl", Format::Jsonl),
        ("ndjson", Format::Jsonl),
        ("JSONL", Format::Jsonl),
        ("json", Format::JsonArray),
        ("csv", Format::Csv),
    ] {
        assert_eq!(name.parse::<Format>(), Ok(format));
    }
    assert!("xml"
        .parse::<Format>()
        .unwrap_err()
        .to_string()
        .contains("\"xml\""));
    for format in [Format::Jsonl, Format::JsonArray, Format::Csv] {
        assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        let as_json = serde_json::to_value(format).unwrap();
        assert_eq!(as_json, json!(format.to_string()));
        assert_eq!(serde_json::from_value::<Format>(as_json).unwrap(), format);
    }
    assert_eq!(
        serde_json::from_value::<Format>(json!("ndjson")).unwrap(),
        Format::Jsonl
    );
    assert_eq!(Format::Jsonl.locate(7), "line 7");
    assert_eq!(Format::Csv.locate(7), "line 7");
    assert_eq!(Format::JsonArray.locate(7), "element 7");
}

#[test]
fn gzip_declared_by_name_or_content_encoding() {
    assert!(is_gzip("rows.jsonl.gz", None));
    assert!(is_gzip("ROWS.CSV.GZ", None));
    assert!(is_gzip("https://h.example/rows.json.gz?sig=1", None));
    assert!(is_gzip("rows.jsonl", Some("gzip")));
    assert!(is_gzip("rows.jsonl", Some("GZIP")));
    assert!(is_gzip("rows.jsonl", Some("x-gzip")));
    assert!(is_gzip("rows", Some("identity, gzip")));
    assert!(!is_gzip("rows.jsonl", None));
    assert!(!is_gzip("rows.jsonl", Some("identity")));
    assert!(!is_gzip("rows.jsonl", Some("br")));
    assert!(!is_gzip("rows.gzip", Some("")));
    assert!(!is_gzip("https://h.example/rows.jsonl?name=x.gz", None));
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

#[test]
fn jsonl_rows_blank_lines_and_line_numbers() {
    let text = b"{\"id\":\"a\",\"n\":1}\n\n   \n{\"id\":\"b\",\"nested\":{\"x\":[1,2]}}\n\t\n{\"id\":\"c\"}\n";
    assert_eq!(
        ok_rows(Format::Jsonl, text),
        vec![
            (1, json!({"id": "a", "n": 1})),
            (4, json!({"id": "b", "nested": {"x": [1, 2]}})),
            (6, json!({"id": "c"})),
        ]
    );
}

#[test]
fn jsonl_crlf_line_endings() {
    let text = b"{\"id\":\"a\"}\r\n\r\n{\"id\":\"b\"}\r\n";
    assert_eq!(
        ok_rows(Format::Jsonl, text),
        vec![(1, json!({"id": "a"})), (3, json!({"id": "b"}))]
    );
}

#[test]
fn jsonl_last_line_without_a_newline() {
    let text = b"{\"id\":\"a\"}\n{\"id\":\"b\"}";
    assert_eq!(
        ok_rows(Format::Jsonl, text),
        vec![(1, json!({"id": "a"})), (2, json!({"id": "b"}))]
    );
}

#[test]
fn jsonl_empty_input_has_no_rows() {
    assert!(read_all(Format::Jsonl, b"").is_empty());
    assert!(read_all(Format::Jsonl, b"\n\n\r\n  \n").is_empty());
}

#[test]
fn jsonl_bad_lines_are_reported_and_reading_goes_on() {
    let text = b"{\"id\":\"a\"}\n{\"id\": oops}\n{\"id\":\"c\"}\n7\n[1]\n\"s\"\nnull\ntrue\n{\"id\":\"i\"}\n";
    let items = read_all(Format::Jsonl, text);
    let lines = outline(&items);
    assert_eq!(lines[0], r#"1 {"id":"a"}"#);
    assert!(
        lines[1].starts_with("bad: line 2: not valid JSON: "),
        "{}",
        lines[1]
    );
    assert_eq!(
        &lines[2..],
        [
            r#"3 {"id":"c"}"#,
            "bad: line 4: expected an object, got a number",
            "bad: line 5: expected an object, got an array",
            "bad: line 6: expected an object, got a string",
            "bad: line 7: expected an object, got null",
            "bad: line 8: expected an object, got a boolean",
            r#"9 {"id":"i"}"#,
        ]
    );
    assert!(items
        .iter()
        .all(|item| !matches!(item, Err(e) if e.is_fatal())));
    match &items[3] {
        Err(ReadError::BadRow {
            format,
            line,
            problem,
        }) => {
            assert_eq!((*format, *line), (Format::Jsonl, 4));
            assert_eq!(problem, "expected an object, got a number");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn jsonl_a_truncated_last_line_is_a_bad_row() {
    let items = read_all(Format::Jsonl, b"{\"id\":\"a\"}\n{\"id\":\"b");
    assert!(items[0].is_ok());
    assert!(matches!(&items[1], Err(ReadError::BadRow { line: 2, .. })));
    assert_eq!(items.len(), 2);
}

#[test]
fn jsonl_invalid_utf8_is_a_bad_row() {
    let items = read_all(Format::Jsonl, b"{\"id\":\"\xff\xfe\"}\n{\"id\":\"ok\"}\n");
    let lines = outline(&items);
    assert!(
        lines[0].starts_with("bad: line 1: not valid JSON"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], r#"2 {"id":"ok"}"#);
}

#[test]
fn a_byte_order_mark_is_skipped() {
    assert_eq!(
        ok_rows(Format::Jsonl, b"\xef\xbb\xbf{\"id\":\"a\"}\n"),
        vec![(1, json!({"id": "a"}))]
    );
    assert_eq!(
        ok_rows(Format::JsonArray, b"\xef\xbb\xbf[{\"id\":\"a\"}]"),
        vec![(1, json!({"id": "a"}))]
    );
    // Only at the very start: further on it is data.
    let items = read_all(Format::Jsonl, b"{}\n\xef\xbb\xbf{}\n");
    assert!(items[0].is_ok());
    assert!(matches!(items[1], Err(ReadError::BadRow { line: 2, .. })));
    // A BOM and nothing else.
    assert!(read_all(Format::Jsonl, b"\xef\xbb\xbf").is_empty());
}

// ---------------------------------------------------------------------------------------------
// JSON array

#[test]
fn json_array_elements_with_tricky_strings_and_nesting() {
    let text = br#"  [
        {"id": "a", "s": "] , [ { } \" \\", "list": [[1, [2]], {"k": "]"}]},
        {"id":"b","esc":"\\\"],","u":"\u00e9\ud83d\ude00"}  ,
        {"id": "c", "o": {"x": {"y": {"z": ","}}}, "e": ""}
    ]
    "#;
    assert_eq!(
        ok_rows(Format::JsonArray, text),
        vec![
            (
                1,
                json!({"id": "a", "s": "] , [ { } \" \\", "list": [[1, [2]], {"k": "]"}]})
            ),
            (2, json!({"id": "b", "esc": "\\\"],", "u": "é😀"})),
            (
                3,
                json!({"id": "c", "o": {"x": {"y": {"z": ","}}}, "e": ""})
            ),
        ]
    );
}

#[test]
fn json_array_empty() {
    assert!(read_all(Format::JsonArray, b"[]").is_empty());
    assert!(read_all(Format::JsonArray, b" \r\n[ \n\t ]\n ").is_empty());
}

#[test]
fn json_array_non_objects_are_bad_rows_with_their_index() {
    let text = br#"[{"id":"a"}, 7, "s", [1,2], null, {"id": }, {"id":"g"}]"#;
    let items = read_all(Format::JsonArray, text);
    let lines = outline(&items);
    assert_eq!(lines[0], r#"1 {"id":"a"}"#);
    assert_eq!(lines[1], "bad: element 2: expected an object, got a number");
    assert_eq!(lines[2], "bad: element 3: expected an object, got a string");
    assert_eq!(lines[3], "bad: element 4: expected an object, got an array");
    assert_eq!(lines[4], "bad: element 5: expected an object, got null");
    assert!(
        lines[5].starts_with("bad: element 6: not valid JSON"),
        "{}",
        lines[5]
    );
    assert_eq!(lines[6], r#"7 {"id":"g"}"#);
    assert_eq!(items.len(), 7);
}

#[test]
fn json_array_truncated_input_is_fatal() {
    for (text, rows_first) in [
        (&b"["[..], 0),
        (b"[{\"id\":\"a\"}", 0),
        (b"[{\"id\":\"a\"},", 1),
        (b"[{\"id\":\"a\"}, {\"id\":", 1),
        (b"[{\"id\":\"a\"}, {\"id\":\"b", 1),
        (b"[{\"id\":\"a\"}, {\"id\":\"b\\\"", 1),
    ] {
        let items = read_all(Format::JsonArray, text);
        let shown = String::from_utf8_lossy(text);
        assert_eq!(
            items.len(),
            rows_first + 1,
            "{shown}: {:?}",
            outline(&items)
        );
        assert!(items[..rows_first].iter().all(Result::is_ok), "{shown}");
        let last = outline(&items).pop().unwrap();
        assert!(last.starts_with("fatal: "), "{shown}: {last}");
        assert!(last.contains("truncated"), "{shown}: {last}");
    }
}

#[test]
fn json_array_broken_structure_is_fatal() {
    let cases: [(&[u8], &str); 9] = [
        (b"", "the input is empty"),
        (b"  \n", "the input is empty"),
        (
            b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n",
            "expected a JSON array (`[`) at byte 0, found `{`",
        ),
        (b"[{\"id\":\"a\"},,{\"id\":\"b\"}]", "element 2 is missing"),
        (b"[,{\"id\":\"a\"}]", "element 1 is missing"),
        (b"[{\"id\":\"a\"},]", "element 2 is missing"),
        (b"[{\"id\":[1}]", "does not match"),
        (b"[{\"id\":\"a\"}}]", "closes nothing"),
        (b"[{\"id\":\"a\"}] [", "after the array's closing `]`"),
    ];
    for (text, expected) in cases {
        let items = read_all(Format::JsonArray, text);
        let last = outline(&items).pop().unwrap_or_default();
        assert!(
            last.starts_with("fatal: ") && last.contains(expected),
            "{}: {last}",
            String::from_utf8_lossy(text)
        );
        assert!(is_fatal(items.last()));
    }
    // What came before the break was read.
    let items = read_all(Format::JsonArray, b"[{\"id\":\"a\"},,{}]");
    assert!(items[0].is_ok());
    assert_eq!(items.len(), 2);
}

#[test]
fn json_array_nesting_deeper_than_serde_allows_is_one_bad_row() {
    let deep = format!(
        "[{}], {{\"id\":\"ok\"}}",
        "[".repeat(5000) + &"]".repeat(5000)
    );
    let text = format!("[{{\"id\":\"a\"}}, {deep}]");
    let lines = outline(&read_all(Format::JsonArray, text.as_bytes()));
    assert_eq!(lines[0], r#"1 {"id":"a"}"#);
    assert!(lines[1].starts_with("bad: element 2: "), "{}", lines[1]);
    assert_eq!(lines[2], r#"3 {"id":"ok"}"#);
}

#[test]
fn nothing_follows_a_fatal_error() {
    let mut reader = reader_over(Format::JsonArray, b"[{},,{}]", usize::MAX);
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().unwrap_err().is_fatal());
    assert!(reader.next().is_none());
    assert!(reader.next().is_none());
}

// ---------------------------------------------------------------------------------------------
// CSV

#[test]
fn csv_rows_are_strings_by_column_name() {
    let text = b"id,name,count\n1,Ada,3\n2,,0\n";
    assert_eq!(
        ok_rows(Format::Csv, text),
        vec![
            (2, json!({"id": "1", "name": "Ada", "count": "3"})),
            (3, json!({"id": "2", "name": "", "count": "0"})),
        ]
    );
}

#[test]
fn csv_quoting_doubled_quotes_and_embedded_newlines() {
    let text = b"id,note,tail\n\
        1,\"a, b\",x\n\
        2,\"say \"\"hi\"\"\",y\n\
        3,\"line one\nline two\r\nline three\",z\n\
        4,\"\",\"\"\"\"\n\
        5,plain,\"q\"\n";
    assert_eq!(
        ok_rows(Format::Csv, text),
        vec![
            (2, json!({"id": "1", "note": "a, b", "tail": "x"})),
            (3, json!({"id": "2", "note": "say \"hi\"", "tail": "y"})),
            (
                4,
                json!({"id": "3", "note": "line one\nline two\r\nline three", "tail": "z"})
            ),
            (7, json!({"id": "4", "note": "", "tail": "\""})),
            (8, json!({"id": "5", "note": "plain", "tail": "q"})),
        ]
    );
}

#[test]
fn csv_a_bad_row_after_a_multiline_field_names_its_own_line() {
    let text = b"id,note\n1,\"a\n\nb\"\n2\n3,ok\n";
    let lines = outline(&read_all(Format::Csv, text));
    assert_eq!(
        lines,
        [
            r#"2 {"id":"1","note":"a\n\nb"}"#,
            "bad: line 5: 1 field where the header has 2 columns",
            r#"6 {"id":"3","note":"ok"}"#,
        ]
    );
}

#[test]
fn csv_crlf_blank_lines_and_a_last_row_without_newline() {
    let text = b"\r\nid,v\r\n\r\n1,a\r\n\n2,b";
    assert_eq!(
        ok_rows(Format::Csv, text),
        vec![
            (4, json!({"id": "1", "v": "a"})),
            (6, json!({"id": "2", "v": "b"})),
        ]
    );
    assert_eq!(
        ok_rows(Format::Csv, b"id,v\r\n1,\"a\"\r\n2,b\r"),
        vec![
            (2, json!({"id": "1", "v": "a"})),
            (3, json!({"id": "2", "v": "b"})),
        ]
    );
}

#[test]
fn csv_lenient_quotes_and_lone_carriage_returns_are_data() {
    let text = b"id,v\n1,5\" screen\n2,\"a\"b\n3,x\ry\n";
    assert_eq!(
        ok_rows(Format::Csv, text),
        vec![
            (2, json!({"id": "1", "v": "5\" screen"})),
            (3, json!({"id": "2", "v": "ab"})),
            (4, json!({"id": "3", "v": "x\ry"})),
        ]
    );
}

#[test]
fn csv_byte_order_mark_is_not_part_of_the_first_column() {
    let rows = ok_rows(Format::Csv, b"\xef\xbb\xbfid,v\n1,a\n");
    assert_eq!(rows, vec![(2, json!({"id": "1", "v": "a"}))]);
}

#[test]
fn csv_ragged_rows_are_bad_rows() {
    let text = b"a,b,c\n1,2,3\n1,2\n1,2,3,4\n\"1\",\"2\",\"3\"\n,,\n";
    let lines = outline(&read_all(Format::Csv, text));
    assert_eq!(
        lines,
        [
            r#"2 {"a":"1","b":"2","c":"3"}"#,
            "bad: line 3: 2 fields where the header has 3 columns",
            "bad: line 4: 4 fields where the header has 3 columns",
            r#"5 {"a":"1","b":"2","c":"3"}"#,
            r#"6 {"a":"","b":"","c":""}"#,
        ]
    );
}

#[test]
fn csv_invalid_utf8_is_a_bad_row_naming_line_and_column() {
    let text = b"id,name\n1,ok\n2,caf\xe9\n3,\"multi\nline \xff\"\n4,fine\n";
    let items = read_all(Format::Csv, text);
    let lines = outline(&items);
    assert_eq!(
        lines,
        [
            r#"2 {"id":"1","name":"ok"}"#,
            "bad: line 3: column `name` is not valid UTF-8 (at byte 3 of the value)",
            "bad: line 4: column `name` is not valid UTF-8 (at byte 11 of the value)",
            r#"6 {"id":"4","name":"fine"}"#,
        ]
    );
}

#[test]
fn csv_header_problems_are_fatal() {
    let cases: [(&[u8], &str); 7] = [
        (b"", "no header row"),
        (b"\n\r\n\n", "no header row"),
        (
            b"id,name,id\n1,2,3\n",
            "header (line 1): column `id` appears twice (columns 1 and 3)",
        ),
        (b"id,,x\n1,2,3\n", "header (line 1): column 2 has no name"),
        (b"id,\n1,2\n", "header (line 1): column 2 has no name"),
        (
            b"id,n\xffme\n1,2\n",
            "header (line 1): column 2's name is not valid UTF-8",
        ),
        (
            b"\nid,\"na\nme\n1,2\n",
            "line 2: a quoted field is never closed",
        ),
    ];
    for (text, expected) in cases {
        let items = read_all(Format::Csv, text);
        assert_eq!(items.len(), 1, "{}", String::from_utf8_lossy(text));
        let only = outline(&items).pop().unwrap();
        assert!(
            only.starts_with("fatal: ") && only.contains(expected),
            "{}: {only}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn csv_header_alone_has_no_rows() {
    assert!(read_all(Format::Csv, b"id,name\n").is_empty());
    assert!(read_all(Format::Csv, b"id,name").is_empty());
}

#[test]
fn csv_a_quote_never_closed_is_fatal_after_the_rows_before_it() {
    let items = read_all(Format::Csv, b"id,v\n1,a\n2,\"b\n3,c\n4,d\n");
    let lines = outline(&items);
    assert_eq!(lines[0], r#"2 {"id":"1","v":"a"}"#);
    assert_eq!(
        lines[1],
        "fatal: line 3: a quoted field is never closed (the input ends inside it)"
    );
    assert_eq!(lines.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// gzip

const GZ_JSONL: &[u8] = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n";

fn read_gz(bytes: Vec<u8>, declared: bool) -> Vec<Result<Row, ReadError>> {
    RowReader::new(Box::new(Cursor::new(bytes)), Format::Jsonl, declared).collect()
}

#[test]
fn gzip_declared_or_sniffed_is_gunzipped() {
    let expected = vec![(1, json!({"id": "a"})), (2, json!({"id": "b"}))];
    for declared in [
        is_gzip("rows.jsonl.gz", None),
        is_gzip("rows.jsonl", Some("gzip")),
        is_gzip("rows.jsonl", None),
    ] {
        let rows: Vec<_> = read_gz(gzip(GZ_JSONL), declared)
            .into_iter()
            .map(|item| {
                let row = item.unwrap();
                (row.line, Value::Object(row.values))
            })
            .collect();
        assert_eq!(rows, expected, "declared: {declared}");
    }
    // Cut anywhere, as a network read would.
    let rows = ok_rows(Format::Jsonl, &gzip(GZ_JSONL));
    assert_eq!(rows, expected);
    // gzip around CSV and a JSON array, with a BOM inside.
    assert_eq!(
        ok_rows(Format::Csv, &gzip(b"\xef\xbb\xbfid\nx\n")),
        vec![(2, json!({"id": "x"}))]
    );
    assert_eq!(
        ok_rows(Format::JsonArray, &gzip(b"[{\"id\":1}]")),
        vec![(1, json!({"id": 1}))]
    );
}

#[test]
fn gzip_multi_member_reads_every_member() {
    let mut bytes = gzip(b"{\"id\":\"a\"}\n");
    bytes.extend(gzip(b"{\"id\":\"b\"}\n"));
    assert_eq!(read_gz(bytes, true).len(), 2);
}

#[test]
fn gzip_corrupt_is_fatal() {
    let big: Vec<u8> = (0..2000)
        .flat_map(|i| format!("{{\"id\":\"row-{i}\",\"pad\":\"{}\"}}\n", i * 7919).into_bytes())
        .collect();
    let mut corrupt = gzip(&big);
    let middle = corrupt.len() / 2;
    for byte in &mut corrupt[middle..middle + 16] {
        *byte ^= 0x5a;
    }
    let items = read_gz(corrupt, true);
    assert!(is_fatal(items.last()), "{:?}", outline(&items).last());
    let last = outline(&items).pop().unwrap();
    assert!(
        last.contains("cannot read the gzip input at line"),
        "{last}"
    );

    // A flipped byte in the CRC32 trailer: every row decodes, the check still fails.
    let mut bad_crc = gzip(GZ_JSONL);
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    assert!(is_fatal(read_gz(bad_crc, true).last()));
}

#[test]
fn gzip_truncated_is_fatal_not_a_short_list() {
    let big: Vec<u8> = (0..5000)
        .flat_map(|i| format!("{{\"id\":\"row-{i}\"}}\n").into_bytes())
        .collect();
    let whole = gzip(&big);
    for keep in [whole.len() - 4, whole.len() - 9, whole.len() / 2, 12] {
        let items = read_gz(whole[..keep].to_vec(), true);
        assert!(
            is_fatal(items.last()),
            "cut at {keep} of {}: {:?}",
            whole.len(),
            outline(&items).last()
        );
    }
}

#[test]
fn gzip_declared_but_not_gzip_is_fatal() {
    let items = read_gz(GZ_JSONL.to_vec(), true);
    assert_eq!(items.len(), 1);
    let only = outline(&items).pop().unwrap();
    assert!(only.contains("declared gzip"), "{only}");
    assert!(is_fatal(read_gz(Vec::new(), true).last()));
}

#[test]
fn an_io_error_is_fatal_and_says_where() {
    struct Failing(Cursor<Vec<u8>>);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset")),
                n => Ok(n),
            }
        }
    }
    let input = Failing(Cursor::new(b"{\"id\":1}\n{\"id\":2}\n{\"id\"".to_vec()));
    let items: Vec<_> = RowReader::new(Box::new(input), Format::Jsonl, false).collect();
    assert_eq!(
        outline(&items),
        [
            r#"1 {"id":1}"#,
            r#"2 {"id":2}"#,
            "fatal: cannot read the input at line 3: peer reset",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The row cap

#[test]
fn a_row_over_the_cap_is_a_bad_row_and_the_next_is_read() {
    let max = 64;
    let long = "x".repeat(100);
    let fits = "y".repeat(max - 12); // {"id":"…"} is 10 bytes of syntax around the value
                                     // JSON Lines: the long line is skipped up to its newline.
    let text = format!("{{\"id\":\"a\"}}\n{{\"id\":\"{long}\"}}\n{{\"id\":\"{fits}\"}}\n");
    let lines = outline(&read_capped(Format::Jsonl, text.as_bytes(), max));
    assert_eq!(lines[0], r#"1 {"id":"a"}"#);
    assert_eq!(
        lines[1],
        "bad: line 2: the row is larger than 64 bytes (the limit of one message)"
    );
    assert!(lines[2].starts_with("3 "), "{}", lines[2]);

    // JSON array: the scanner follows the long element's strings and brackets to its end,
    // though it no longer keeps it.
    let tricky = format!("{long}\\\"],{{[\\\\");
    let text =
        format!("[{{\"id\":\"a\"}}, {{\"id\":\"{tricky}\",\"n\":[[],{{}}]}}, {{\"id\":\"b\"}}]");
    let lines = outline(&read_capped(Format::JsonArray, text.as_bytes(), max));
    assert_eq!(
        lines,
        [
            r#"1 {"id":"a"}"#,
            "bad: element 2: the row is larger than 64 bytes (the limit of one message)",
            r#"3 {"id":"b"}"#,
        ]
    );

    // CSV: past the cap the quotes are still followed, so the next record and its line are
    // right.
    let text = format!("id,v\n1,a\n2,\"{long}\n,\"\"{long}\"\n3,b\n");
    let lines = outline(&read_capped(Format::Csv, text.as_bytes(), max));
    assert_eq!(
        lines,
        [
            r#"2 {"id":"1","v":"a"}"#,
            "bad: line 3: the row is larger than 64 bytes (the limit of one message)",
            r#"5 {"id":"3","v":"b"}"#,
        ]
    );
    // A header over the cap leaves nothing to read rows by.
    let text = format!("id,{long}\n1,2\n");
    let last = outline(&read_capped(Format::Csv, text.as_bytes(), max)).pop();
    assert_eq!(
        last.as_deref(),
        Some("fatal: header (line 1): larger than 64 bytes")
    );
}

#[test]
fn the_default_cap_is_one_message_and_bounds_the_buffer() {
    let long = "x".repeat(MAX_ROW_BYTES + 1000);
    let text = format!("{{\"id\":\"a\"}}\n{{\"id\":\"{long}\"}}\n{{\"id\":\"b\"}}\n");
    let mut reader = reader_over(Format::Jsonl, text.as_bytes(), usize::MAX);
    let lines = outline(&reader.by_ref().collect::<Vec<_>>());
    assert_eq!(lines.len(), 3);
    assert!(lines[1].contains(&format!("larger than {MAX_ROW_BYTES} bytes")));
    // No more than the cap for the row, however long the line.
    assert!(
        reader.buffered_high_water() <= MAX_ROW_BYTES + 64 * 1024,
        "{}",
        reader.buffered_high_water()
    );
    // A line of exactly the cap is a row.
    let exact = format!("{{\"id\":\"{}\"}}", "x".repeat(MAX_ROW_BYTES - 9));
    assert_eq!(exact.len(), MAX_ROW_BYTES);
    assert_eq!(ok_rows(Format::Jsonl, exact.as_bytes()).len(), 1);
    // Its CRLF ending is no part of it; one byte more is too much.
    let crlf = format!("{exact}\r\n{exact}\r\n");
    assert_eq!(ok_rows(Format::Jsonl, crlf.as_bytes()).len(), 2);
    let over = format!("{exact} \r\n");
    assert!(matches!(
        read_all(Format::Jsonl, over.as_bytes())[..],
        [Err(ReadError::BadRow { line: 1, .. })]
    ));
}

#[test]
fn unbounded_input_without_row_ends_stays_within_the_cap() {
    // 8 MiB with no newline / an unclosed string in an array element / unclosed brackets / an
    // unclosed quote: each reader consumes it all and keeps no more than the cap.
    let max = 4096;
    let cases: [(Format, &[u8]); 4] = [
        (Format::Jsonl, b"{\"id\":\""),
        (Format::JsonArray, b"[{\"id\":[[[[\""),
        // Nesting without end: the scanner remembers only the first levels' brackets.
        (Format::JsonArray, b"["),
        (Format::Csv, b"id\n\""),
    ];
    for (format, head) in cases {
        let input = Cursor::new(head.to_vec()).chain(io::repeat(b'[').take(8 << 20));
        let mut reader = RowReader::new(Box::new(input), format, false).with_max_row_bytes(max);
        let items: Vec<_> = reader.by_ref().collect();
        assert!(!items.is_empty(), "{format}");
        assert!(
            reader.buffered_high_water() <= max + 64 * 1024,
            "{format}: {}",
            reader.buffered_high_water()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// A list generated as it is read, never held: `rows` rows of JSON Lines or one JSON array,
/// each row the same width so the end of row k is known. `given` counts the bytes handed out.
struct Generated {
    format: Format,
    rows: u64,
    emitted: u64,
    pending: Vec<u8>,
    pos: usize,
    closed: bool,
    given: Arc<AtomicU64>,
}

const ROW_WIDTH: u64 = r#"{"id":"row-0000001","n":1}"#.len() as u64;

impl Generated {
    fn new(format: Format, rows: u64) -> (Self, Arc<AtomicU64>) {
        let given = Arc::new(AtomicU64::new(0));
        let opening = if format == Format::JsonArray {
            b"[".to_vec()
        } else {
            Vec::new()
        };
        let generated = Self {
            format,
            rows,
            emitted: 0,
            pending: opening,
            pos: 0,
            closed: false,
            given: Arc::clone(&given),
        };
        (generated, given)
    }

    /// Bytes of the input up to and including row `k`'s separator.
    fn end_of_row(format: Format, k: u64) -> u64 {
        let opening = u64::from(format == Format::JsonArray);
        opening + k * (ROW_WIDTH + 1)
    }

    fn refill(&mut self) {
        self.pending.clear();
        self.pos = 0;
        while self.pending.len() < 8192 && self.emitted < self.rows {
            self.emitted += 1;
            let i = self.emitted;
            write!(self.pending, r#"{{"id":"row-{i:07}","n":{}}}"#, i % 10).unwrap();
            let last = self.emitted == self.rows;
            self.pending.push(match self.format {
                Format::JsonArray if last => b']',
                Format::JsonArray => b',',
                _ => b'\n',
            });
        }
        if self.emitted == self.rows && !self.closed {
            self.closed = true;
            if self.format == Format::JsonArray && self.rows == 0 {
                self.pending.push(b']');
            }
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.pending.len() {
            self.refill();
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        self.given.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads `rows` generated rows, checking after every row that the reader has taken at most
/// one read buffer beyond it, and returns the count.
fn stream(format: Format, rows: u64) -> u64 {
    let (generated, given) = Generated::new(format, rows);
    let mut reader = RowReader::new(Box::new(generated), format, false);
    let mut count = 0;
    let mut worst_ahead = 0;
    for item in reader.by_ref() {
        let row = item.unwrap();
        count += 1;
        assert_eq!(row.line, count);
        let ahead = given.load(Ordering::Relaxed)
            - Generated::end_of_row(format, count).min(given.load(Ordering::Relaxed));
        worst_ahead = worst_ahead.max(ahead);
    }
    assert!(
        worst_ahead <= 64 * 1024,
        "{format}: read {worst_ahead} bytes ahead"
    );
    // The read buffer, and a row buffer that never grew past a few rows' width.
    let held = reader.buffered_high_water();
    assert!(held <= 64 * 1024 + 1024, "{format}: held {held} bytes");
    count
}

/// A million rows in release builds; 200,000 in debug builds, where parsing a million takes
/// 5-6 s per format on a 2-core machine. The bounds checked do not depend on the count.
const ROWS: u64 = if cfg!(debug_assertions) {
    200_000
} else {
    1_000_000
};

#[test]
fn jsonl_streams_without_holding_the_list() {
    assert_eq!(stream(Format::Jsonl, ROWS), ROWS);
}

#[test]
fn json_array_streams_without_holding_the_list() {
    assert_eq!(stream(Format::JsonArray, ROWS), ROWS);
}

#[test]
fn generated_lists_are_what_they_claim() {
    // The generator itself, on a few rows: valid JSON Lines and a valid JSON array.
    let mut text = String::new();
    Generated::new(Format::JsonArray, 3)
        .0
        .read_to_string(&mut text)
        .unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 3);
    assert_eq!(
        text.len() as u64,
        Generated::end_of_row(Format::JsonArray, 3)
    );
    let mut text = String::new();
    Generated::new(Format::Jsonl, 3)
        .0
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text.lines().count(), 3);
    assert_eq!(text.len() as u64, Generated::end_of_row(Format::Jsonl, 3));
    assert_eq!(stream(Format::JsonArray, 0), 0);
}

#[test]
fn a_reader_can_move_to_another_thread() {
    fn send<T: Send>(_: &T) {}
    send(&reader_over(Format::Csv, b"", 1));
}
