//! The fast path of record decoding: a scanner for the shape nearly every record has, producing exactly the
//! [`WireRecord`] that the `serde_json` path would.
//!
//! It owns one promise: whenever it returns a record, the strict `serde_json` reader would have returned the
//! same one for the same text. It keeps that promise by accepting only a plain subset of JSON and giving up
//! (`None`) on anything else: escapes or control characters in strings, unknown or repeated top-level keys,
//! numbers with exponents, leading zeros, `-0` or more than 18 digits, nested arrays or objects inside
//! `attributes`/`properties`, anything after the closing brace. The caller then runs the full reader, which
//! decides (and explains any rejection). It never rejects anything itself. A property test compares the two
//! paths on generated records (`input::tests`).

use super::{Field, Key, ObjField, Wire, WireRecord};
use crate::Id;
use crate::attrs::Attrs;
use serde_json::{Number, Value};
use std::borrow::Cow;

/// The length of the plain string text at the start of `bytes`, up to its closing quote; `None` when an
/// escape or a control character comes first, or no quote ends it.
#[inline]
fn plain_run(bytes: &[u8]) -> Option<usize> {
    crate::swar::first_to_escape(bytes).filter(|&at| bytes[at] == b'"')
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// A string without escapes or control characters, borrowed from the text.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let end = start + plain_run(self.text.as_bytes().get(start..)?)?;
        self.pos = end + 1;
        // `start` and the closing quote sit next to ASCII quotes, so both are character boundaries.
        self.text.get(start..end)
    }

    /// A top-level key, matched in place against the known names (`Key::from_quoted`).
    fn key(&mut self) -> Option<Key> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let (key, len) = Key::from_quoted(self.text.as_bytes().get(self.pos + 1..)?)?;
        self.pos += 1 + len;
        Some(key)
    }

    /// A number as `serde_json` reads it (an integer as `u64`/`i64`, a decimal as the nearest `f64`), for
    /// the plain forms only.
    fn number(&mut self) -> Option<Value> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut i = start;
        let negative = bytes.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int_digits = i - int_start;
        if int_digits == 0 || int_digits > 18 || (int_digits > 1 && bytes[int_start] == b'0') {
            return None;
        }
        let mut decimal = false;
        if bytes.get(i) == Some(&b'.') {
            decimal = true;
            i += 1;
            let frac_start = i;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == frac_start || i - frac_start > 18 {
                return None;
            }
        }
        if matches!(bytes.get(i), Some(b'e' | b'E' | b'.' | b'0'..=b'9')) {
            return None;
        }
        let text = self.text.get(start..i)?;
        self.pos = i;
        if decimal {
            // Both this and serde_json (with `float_roundtrip`) round correctly: the same f64.
            let v: f64 = text.parse().ok()?;
            return Number::from_f64(v).map(Value::Number);
        }
        if negative {
            let v: i64 = text.parse().ok()?;
            // `-0` reads as the integer 0 in serde_json but is rare enough to leave to it.
            (v != 0).then(|| Value::Number(v.into()))
        } else {
            text.parse::<u64>().ok().map(|v| Value::Number(v.into()))
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> Option<Value> {
        self.text.get(self.pos..)?.starts_with(word).then(|| {
            self.pos += word.len();
            v
        })
    }

    /// A scalar value of an attribute map.
    fn scalar(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|s| Value::String(s.to_owned())),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A flat object of scalars: `attributes` or `properties`.
    fn flat_object(&mut self) -> Option<Attrs> {
        self.eat(b'{')?;
        let mut pairs: Vec<(Id, Value)> = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Attrs::default());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            pairs.push((Id::from(key), self.scalar()?));
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        // A repeated key is an error the full reader reports.
        Attrs::from_pairs(pairs).ok()
    }
}

/// The record, when it has the plain shape; `None` sends it to the full reader.
pub(super) fn read(text: &str) -> Option<WireRecord<'_>> {
    let mut s = Scanner { text, pos: 0 };
    let mut w = WireRecord { wire: Wire::default(), attributes: None, properties: None };
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.pos += 1;
    } else {
        loop {
            let key = s.key()?;
            s.eat(b':')?;
            s.ws();
            match key {
                Key::Attributes | Key::Properties => {
                    let slot = if key == Key::Attributes { &mut w.attributes } else { &mut w.properties };
                    if slot.is_some() {
                        return None;
                    }
                    *slot = Some(ObjField::Obj(s.flat_object()?));
                }
                _ => {
                    let slot = &mut w.wire.fields[key as usize];
                    if slot.is_some() {
                        return None;
                    }
                    *slot = Some(Field::Str(Cow::Borrowed(s.string()?)));
                }
            }
            s.ws();
            match s.peek()? {
                b',' => s.pos += 1,
                b'}' => {
                    s.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.ws();
    (s.pos == text.len()).then_some(w)
}

#[cfg(test)]
mod tests {
    use super::super::{DecodeLimits, EventBody, decode_text, decode_wire};
    use super::read;
    use proptest::prelude::*;

    /// Builds a record from a tape of random choices: mostly plain, sometimes with every kind of oddity the
    /// fast path must leave to the full reader.
    struct Builder<'t> {
        tape: std::slice::Iter<'t, u16>,
    }

    impl Builder<'_> {
        fn pick(&mut self, n: usize) -> usize {
            self.tape.next().map_or(0, |v| usize::from(*v) % n)
        }
        fn ws(&mut self) -> &'static str {
            [" ", "", "", "", "", "\n", "\t ", ""][self.pick(8)]
        }
        fn string(&mut self, plain: &[&str]) -> String {
            match self.pick(150) {
                0 => r#""a\"b""#.into(),
                1 => r#""\u00e9t\u00e9""#.into(),
                2 => "\"x\ny\"".into(),
                3 => r#""""#.into(),
                4 => "\"caf\u{e9} \u{1F600}\"".into(),
                _ => format!("\"{}\"", plain[self.pick(plain.len())]),
            }
        }
        fn scalar(&mut self) -> String {
            let numbers = [
                "0",
                "-0",
                "7",
                "-7",
                "007",
                "12.5",
                "-0.25",
                "1.",
                ".5",
                "1e3",
                "2E-2",
                "1.5e2",
                "123456789012345678",
                "1234567890123456789",
                "-123456789012345678",
                "18446744073709551615",
                "0.1",
                "3.14159265358979323",
                "1.0",
                "-",
                "1.2.3",
                "99999999999999999999",
            ];
            match self.pick(30) {
                0..=8 => self.string(&["acme", "vp", "x@y.example", "Déjà vu"]),
                9..=11 => numbers[self.pick(numbers.len())].into(),
                12..=14 => ["-12.5", "0.75", "-3", "42", "1.0"][self.pick(5)].into(),
                15..=17 => ["true", "false", "null", "tru", "nul"][self.pick(5)].into(),
                18 => ["[1,2]", "{\"k\":1}", "{}", "[]"][self.pick(4)].into(),
                _ => format!("{}", self.pick(1000)),
            }
        }
        fn object(&mut self) -> String {
            let keys = ["name", "score", "employees", "job_title", "asset_id", "name"];
            let n = self.pick(5);
            let members: Vec<String> = (0..n)
                .map(|_| {
                    let (k, w1, v, w2) = (keys[self.pick(keys.len())], self.ws(), self.scalar(), self.ws());
                    format!("\"{k}\"{w1}:{w2}{v}")
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
        fn record(&mut self) -> String {
            let mut types = EventBody::TYPE_NAMES.to_vec();
            types.push("nope");
            let mut members: Vec<String> = Vec::new();
            let mut field = |b: &mut Self, key: &str, value: String| {
                if b.pick(30) != 0 {
                    let (w1, w2) = (b.ws(), b.ws());
                    members.push(format!("{w1}\"{key}\"{w2}:{value}"));
                }
            };
            let v = self.string(&["t1", "t2"]);
            field(self, "tenant", v);
            let v = self.string(&types);
            field(self, "type", v);
            let v = self.string(&["e1", "e2", "e3"]);
            field(self, "event_id", v);
            let v = self.string(&[
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00.123Z",
                "2026-03-01T10:00:00+01:00",
                "yesterday",
                "1999-01-01T00:00:00Z",
            ]);
            field(self, "ts", v);
            for key in ["account_id", "person_id", "opportunity_id", "audience_id"] {
                let v = if self.pick(40) == 0 { self.scalar() } else { self.string(&["a1", "p1", "o1", "target"]) };
                field(self, key, v);
            }
            let v = self.string(&["entered", "exited", "gone"]);
            field(self, "status", v);
            let v = self.string(&["email.opened", "web.visited", "custom.x", "custom.", "bogus"]);
            field(self, "activity", v);
            for key in ["attributes", "properties"] {
                let v = if self.pick(30) == 0 { self.scalar() } else { self.object() };
                field(self, key, v);
            }
            match self.pick(40) {
                0 => members.push("\"extra\":1".into()),
                1 => members.push("\"tenant\":\"t1\"".into()),
                _ => {}
            }
            // Shuffle by the tape.
            for i in (1..members.len()).rev() {
                let j = self.pick(i + 1);
                members.swap(i, j);
            }
            let tail = match self.pick(40) {
                0 => "x",
                1 => "}",
                2 => ",",
                3 => " \n",
                _ => "",
            };
            format!("{}{{{}}}{}", self.ws(), members.join(","), tail)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Whenever the fast path reads a record, the full reader reads the same record, or rejects it with
        /// the same reason and detail.
        #[test]
        fn fast_path_agrees_with_the_full_reader(tape in proptest::collection::vec(any::<u16>(), 120)) {
            let text = Builder { tape: tape.iter() }.record();
            let limits = DecodeLimits::default();
            if let Some(wire) = read(&text) {
                prop_assert_eq!(decode_wire(wire, &limits), decode_text(&text, &limits), "record: {}", text);
            }
        }
    }

    /// The generator is useful only if the fast path takes a fair share of its records, valid and not.
    #[test]
    fn generated_records_exercise_both_paths() {
        let (mut fast, mut valid, mut total) = (0, 0, 0);
        let mut seed = 0x2545_f491_u64;
        for _ in 0..2000 {
            let tape: Vec<u16> = (0..120)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u16
                })
                .collect();
            let text = Builder { tape: tape.iter() }.record();
            total += 1;
            if let Some(w) = read(&text) {
                fast += 1;
                valid += usize::from(decode_wire(w, &DecodeLimits::default()).is_ok());
            }
        }
        eprintln!("fast {fast} valid {valid} of {total}");
        assert!(fast * 5 > total && valid * 20 > total, "fast {fast}, valid {valid} of {total}");
    }

    #[test]
    fn key_names_match_their_table() {
        for (name, key) in super::super::KEYS {
            assert!(super::Key::from_name(name) == Some(key), "{name}");
        }
        assert!(super::Key::from_name("tenants").is_none());
        // Near the end of a line (fewer than sixteen bytes left) and within it: two ways of comparing.
        for tail in ["", ":\"a long enough value\"}"] {
            for (name, key) in super::super::KEYS {
                let quoted = format!("{name}\":1{tail}");
                assert!(super::Key::from_quoted(quoted.as_bytes()) == Some((key, name.len() + 1)), "{quoted}");
                // A longer name, a cut one, and one without its closing quote are no key.
                let cut = &name[..name.len() - 1];
                for odd in [format!("{name}s\"{tail}"), format!("{cut}\"{tail}"), format!("{name}{tail}")] {
                    assert!(super::Key::from_quoted(odd.as_bytes()).is_none(), "{odd}");
                }
            }
        }
    }

    #[test]
    fn plain_records_take_the_fast_path_and_odd_ones_do_not() {
        let plain = [
            r#"{"tenant":"bench","type":"person.activity","event_id":"e9","ts":"2026-01-01T00:00:05.120Z","person_id":"p1","account_id":"a1","activity":"email.opened","properties":{"asset_id":"welcome"}}"#,
            r#" { "tenant" : "t", "type":"account.upserted","event_id":"e","ts":"2026-01-01T00:00:00Z","account_id":"a","attributes":{"employees":1200,"revenue":-1.5,"ok":true,"gone":null,"name":"Déjà"}} "#,
            r#"{}"#,
        ];
        for text in plain {
            assert!(read(text).is_some(), "{text}");
        }
        let odd = [
            r#"{"tenant":"t\u0041"}"#,
            r#"{"tenant":"t","tenant":"u"}"#,
            r#"{"tenant":"t","x":1}"#,
            r#"{"attributes":{"a":1e3}}"#,
            r#"{"attributes":{"a":[1]}}"#,
            r#"{"attributes":{"a":01}}"#,
            r#"{"attributes":{"a":1,"a":2}}"#,
            r#"{"tenant":1}"#,
            r#"{"tenant":"t"} x"#,
            r#"{"tenant":"t",}"#,
        ];
        for text in odd {
            assert!(read(text).is_none(), "{text}");
        }
    }
}
