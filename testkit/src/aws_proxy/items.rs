//! DynamoDB write units as on-demand billing counts them: per started KB of the item written,
//! the larger of its size before and after the write (twice that in a transaction), whatever
//! the request's size. The proxy sees every write the functions make, so it keeps each item's
//! attribute sizes as those writes leave them ([`Items`]) and prices a write by the item, not
//! by its request (whose condition and expression texts are not stored and not billed).
//!
//! Sizes follow DynamoDB's rules closely enough to land in the same kilobyte: an attribute is
//! its name's bytes plus its value's (strings and binaries their bytes, numbers about one byte
//! per two digits plus one, booleans and nulls one, lists and maps three plus their elements).
//! An update's `SET`/`ADD` clause sizes its attribute by the largest value it names; `REMOVE`
//! drops it. An item the proxy never saw written counts as its key alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Attribute sizes of every item written through the proxy, by table and key.
#[derive(Debug, Default)]
pub(super) struct Items {
    sizes: Mutex<HashMap<String, BTreeMap<String, usize>>>,
}

/// A write's billed units: `factor` (2 in a transaction) per started KB of the larger size.
fn units(before: usize, after: usize, factor: f64) -> f64 {
    before.max(after).div_ceil(1024).max(1) as f64 * factor
}

impl Items {
    /// The write units of one write request, applying it to the shadow items when `applied`
    /// (a write refused by its condition consumes units but changes nothing).
    pub(super) fn write_units(&self, operation: &str, request: &Value, applied: bool) -> f64 {
        match operation {
            "PutItem" => self.put(request, 1.0, applied),
            "UpdateItem" => self.update(request, 1.0, applied),
            "DeleteItem" => self.delete(request, 1.0, applied),
            "TransactWriteItems" => request["TransactItems"].as_array().map_or(0.0, |items| {
                items
                    .iter()
                    .map(|item| {
                        if item.get("Put").is_some() {
                            self.put(&item["Put"], 2.0, applied)
                        } else if item.get("Update").is_some() {
                            self.update(&item["Update"], 2.0, applied)
                        } else if item.get("Delete").is_some() {
                            self.delete(&item["Delete"], 2.0, applied)
                        } else {
                            let check = &item["ConditionCheck"];
                            units(self.size(check, &check["Key"]), 0, 2.0)
                        }
                    })
                    .sum()
            }),
            "BatchWriteItem" => request["RequestItems"].as_object().map_or(0.0, |tables| {
                tables
                    .iter()
                    .flat_map(|(table, writes)| {
                        writes
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(move |w| (table, w))
                    })
                    .map(|(table, w)| {
                        let named = |inner: &Value| {
                            let mut r = inner.clone();
                            r["TableName"] = Value::String(table.clone());
                            r
                        };
                        if let Some(put) = w.get("PutRequest") {
                            self.put(&named(put), 1.0, applied)
                        } else {
                            self.delete(&named(&w["DeleteRequest"]), 1.0, applied)
                        }
                    })
                    .sum()
            }),
            _ => 0.0,
        }
    }

    fn id(request: &Value, key: &Value) -> String {
        format!("{}|{}", request["TableName"].as_str().unwrap_or(""), key)
    }

    /// The item's size now: its attributes as written, or its key alone.
    fn size(&self, request: &Value, key: &Value) -> usize {
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes
            .get(&Self::id(request, key))
            .map_or_else(|| attributes_size(key), |attrs| attrs.values().sum())
    }

    fn put(&self, request: &Value, factor: f64, applied: bool) -> f64 {
        let item = request["Item"].as_object().cloned().unwrap_or_default();
        let key = key_of(&item);
        let before = self.size(request, &key);
        let after: BTreeMap<String, usize> = item
            .iter()
            .map(|(name, value)| (name.clone(), name.len() + value_size(value)))
            .collect();
        let after_size = after.values().sum();
        if applied {
            self.store(request, &key, after);
        }
        units(before, after_size, factor)
    }

    fn delete(&self, request: &Value, factor: f64, applied: bool) -> f64 {
        let key = &request["Key"];
        let before = self.size(request, key);
        if applied {
            self.sizes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&Self::id(request, key));
        }
        units(before, 0, factor)
    }

    fn update(&self, request: &Value, factor: f64, applied: bool) -> f64 {
        let key = &request["Key"];
        let mut attrs = {
            let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            sizes
                .get(&Self::id(request, key))
                .cloned()
                .unwrap_or_else(|| {
                    key.as_object()
                        .into_iter()
                        .flatten()
                        .map(|(n, v)| (n.clone(), n.len() + value_size(v)))
                        .collect()
                })
        };
        let before: usize = attrs.values().sum();
        let names = request["ExpressionAttributeNames"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let values = request["ExpressionAttributeValues"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let expression = request["UpdateExpression"].as_str().unwrap_or_default();
        for (action, clause) in clauses(expression) {
            let attribute = resolve(clause.split(['=', ' ', '.', '[']).next(), &names);
            let Some(attribute) = attribute else { continue };
            if action == "REMOVE" {
                attrs.remove(&attribute);
                continue;
            }
            let value = placeholders(&clause)
                .filter_map(|p| values.get(p))
                .map(value_size)
                .max();
            let size = attribute.len() + value.unwrap_or(1);
            let entry = attrs.entry(attribute).or_insert(0);
            *entry = (*entry).max(size);
        }
        let after: usize = attrs.values().sum();
        if applied {
            self.store(request, key, attrs);
        }
        units(before, after, factor)
    }

    fn store(&self, request: &Value, key: &Value, attrs: BTreeMap<String, usize>) {
        self.sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Self::id(request, key), attrs);
    }
}

/// The key attributes a put's item may carry: fanout's single table is keyed by `message_id`
/// (`fanout_shared::aws::KEY`); `pk`/`sk` for tables of other shapes.
const KEY_ATTRIBUTES: [&str; 3] = ["message_id", "pk", "sk"];

/// The key of a put's item (an item without a known key attribute is its own key).
fn key_of(item: &Map<String, Value>) -> Value {
    let key: Map<String, Value> = item
        .iter()
        .filter(|(name, _)| KEY_ATTRIBUTES.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if key.is_empty() {
        Value::Object(item.clone())
    } else {
        Value::Object(key)
    }
}

/// `SET a = :x, b = if_not_exists(b, :y) ADD c :n REMOVE d` → (action, clause) pairs.
fn clauses(expression: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut action = "";
    let mut current = String::new();
    let mut depth = 0usize;
    let flush =
        |action: &'static str, current: &mut String, out: &mut Vec<(&'static str, String)>| {
            let clause = current.trim().to_owned();
            if !clause.is_empty() && !action.is_empty() {
                out.push((action, clause));
            }
            current.clear();
        };
    for word in expression.split_inclusive(char::is_whitespace) {
        let bare = word.trim();
        let keyword = match bare.to_ascii_uppercase().as_str() {
            "SET" => Some("SET"),
            "ADD" => Some("ADD"),
            "REMOVE" => Some("REMOVE"),
            "DELETE" => Some("DELETE"),
            _ => None,
        };
        if let (Some(k), 0) = (keyword, depth) {
            flush(action, &mut current, &mut out);
            action = k;
            continue;
        }
        for c in word.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    flush(action, &mut current, &mut out);
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
    }
    flush(action, &mut current, &mut out);
    out
}

/// The `:placeholders` a clause names.
fn placeholders(clause: &str) -> impl Iterator<Item = &str> {
    clause
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with(':'))
}

/// An attribute path's first name, through `#name` placeholders.
fn resolve(first: Option<&str>, names: &Map<String, Value>) -> Option<String> {
    let first = first?.trim();
    if first.is_empty() {
        return None;
    }
    if first.starts_with('#') {
        names.get(first).and_then(Value::as_str).map(str::to_owned)
    } else {
        Some(first.to_owned())
    }
}

fn attributes_size(item: &Value) -> usize {
    item.as_object().map_or(0, |attrs| {
        attrs
            .iter()
            .map(|(name, value)| name.len() + value_size(value))
            .sum()
    })
}

/// A DynamoDB-JSON value's stored size.
fn value_size(value: &Value) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 1;
    };
    match kind.as_str() {
        "S" | "B" => inner.as_str().map_or(0, str::len),
        "N" => inner.as_str().map_or(1, |n| n.len().div_ceil(2) + 1),
        "BOOL" | "NULL" => 1,
        "SS" | "BS" => inner.as_array().map_or(0, |a| {
            a.iter().filter_map(Value::as_str).map(str::len).sum()
        }),
        "NS" => inner.as_array().map_or(0, |a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|n| n.len().div_ceil(2) + 1)
                .sum()
        }),
        "L" => {
            3 + inner
                .as_array()
                .map_or(0, |a| a.iter().map(|v| 1 + value_size(v)).sum())
        }
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter().map(|(n, v)| 1 + n.len() + value_size(v)).sum()
            })
        }
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_write_is_billed_by_its_item_not_its_request() {
        let items = Items::default();
        // A conditional update whose condition text alone is over a kilobyte: one unit.
        let condition = "attribute_not_exists(pk) OR ".repeat(50);
        let acquire = json!({
            "TableName": "t", "Key": {"pk": {"S": "job-1"}},
            "UpdateExpression": "SET #s = :s, attempts = if_not_exists(attempts, :zero) + :one",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": {"S": "IN_PROGRESS"}, ":zero": {"N": "0"}, ":one": {"N": "1"}}
        });
        assert!(acquire.to_string().len() > 1024);
        assert_eq!(items.write_units("UpdateItem", &acquire, true), 1.0);
        // The item grows past a kilobyte: the next write pays two, in a transaction four.
        let grow = json!({
            "TableName": "t", "Key": {"pk": {"S": "job-1"}},
            "UpdateExpression": "SET body = :b",
            "ExpressionAttributeValues": {":b": {"S": "x".repeat(1100)}}
        });
        assert_eq!(items.write_units("UpdateItem", &grow, true), 2.0);
        let transact = json!({"TransactItems": [
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "job-1"}}, "UpdateExpression": "REMOVE body"}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "run#1#0"}}, "UpdateExpression": "ADD succeeded :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}
        ]});
        // Before the REMOVE the item is over 1 KB (2 × 2), the shard is small (2 × 1).
        assert_eq!(
            items.write_units("TransactWriteItems", &transact, true),
            6.0
        );
        // A refused write pays for the item it would have written, and changes nothing.
        assert_eq!(items.write_units("UpdateItem", &grow, false), 2.0);
        assert_eq!(items.write_units("UpdateItem", &grow, false), 2.0);
    }

    #[test]
    fn clauses_split_on_actions_and_top_level_commas() {
        let parsed = clauses("SET a = :x, b = if_not_exists(b, :y) ADD c :n REMOVE d, e");
        let actions: Vec<_> = parsed.iter().map(|(a, c)| (*a, c.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("SET", "a = :x"),
                ("SET", "b = if_not_exists(b, :y)"),
                ("ADD", "c :n"),
                ("REMOVE", "d"),
                ("REMOVE", "e")
            ]
        );
    }
}
