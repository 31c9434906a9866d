//! A compact attribute map for stored entities.
//!
//! It owns the in-memory and stored form of account and person attributes: a `Vec` of `(key, value)` pairs
//! kept sorted by key. An entity has a handful of attributes, so a sorted vector is smaller than a
//! `BTreeMap` (whose nodes hold eleven slots) and as fast to search. It is not a general JSON object: use
//! [`Attrs::to_map`] where one is needed (outputs, conditions).
//!
//! ```
//! use caravan_schemas::attrs::Attrs;
//! use serde_json::json;
//! let mut a = Attrs::default();
//! a.insert("b", json!(2));
//! a.insert("a", json!(1));
//! assert_eq!(a.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
//! assert_eq!(a.get("b"), Some(&json!(2)));
//! ```

use crate::Id;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// What [`Attrs::merge_undoable`] replaced: the keys it changed, in key order, with their values before
/// (`None`: absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UndoLog(Vec<(Id, Option<Value>)>);

/// Attributes sorted by key, without duplicates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attrs(Vec<(Id, Value)>);

impl Attrs {
    fn find(&self, key: &str) -> Result<usize, usize> {
        // The first bytes decide most comparisons of attribute names, without a call to `memcmp`; the order
        // is the same lexicographic one either way.
        self.0.binary_search_by(|(k, _)| k.as_bytes().first().cmp(&key.as_bytes().first()).then_with(|| (**k).cmp(key)))
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets a key.
    pub fn insert(&mut self, key: &str, value: Value) {
        match self.find(key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key.into(), value)),
        }
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.find(key) {
            self.0.remove(i);
        }
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// Applies an upsert: a present key overwrites, `null` removes. A value equal as JSON to the stored one
    /// (`1` and `1.0`) leaves the stored one as it is.
    pub fn merge(&mut self, from: &Attrs) {
        for (k, v) in from.iter() {
            if v.is_null() {
                self.remove(k);
            } else if !self.get(k).is_some_and(|old| crate::json::json_eq(old, v)) {
                self.insert(k, v.clone());
            }
        }
    }

    /// [`Attrs::merge`], returning what it replaced: each key it changed with its value before (`None`:
    /// absent), in key order. The old values are moved out, not copied: with [`Attrs::undo`] and
    /// [`Attrs::diff_undone`], the log stands for a copy of the attributes as they were before.
    pub fn merge_undoable(&mut self, from: &Attrs) -> UndoLog {
        let mut log = Vec::new();
        for (k, v) in &from.0 {
            match self.find(k) {
                Ok(i) if v.is_null() => {
                    let (key, old) = self.0.remove(i);
                    log.push((key, Some(old)));
                }
                Ok(i) => {
                    if !crate::json::json_eq(&self.0[i].1, v) {
                        let old = std::mem::replace(&mut self.0[i].1, v.clone());
                        log.push((k.clone(), Some(old)));
                    }
                }
                Err(_) if v.is_null() => {}
                Err(i) => {
                    self.0.insert(i, (k.clone(), v.clone()));
                    log.push((k.clone(), None));
                }
            }
        }
        UndoLog(log)
    }

    /// Puts back what [`Attrs::merge_undoable`] replaced (nothing else may have changed since).
    pub fn undo(&mut self, log: UndoLog) {
        for (k, old) in log.0.into_iter().rev() {
            match old {
                Some(v) => self.insert(&k, v),
                None => self.remove(&k),
            }
        }
    }

    /// [`Attrs::diff`] of the attributes before [`Attrs::merge_undoable`] wrote `log` and `self` (nothing
    /// else may have changed since), without rebuilding them: only the logged keys can differ.
    pub fn diff_undone(&self, log: &UndoLog) -> (Attrs, Attrs) {
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for (k, was) in &log.0 {
            let now = self.get(k);
            if !crate::json::opt_json_eq(was.as_ref(), now) {
                old.push((k.clone(), was.clone().unwrap_or(Value::Null)));
                new.push((k.clone(), now.cloned().unwrap_or(Value::Null)));
            }
        }
        (Attrs(old), Attrs(new))
    }

    /// Builds from pairs in any order.
    ///
    /// # Errors
    /// The first key that appears twice.
    pub fn from_pairs(mut pairs: Vec<(Id, Value)>) -> Result<Attrs, Id> {
        // Records often list their attributes in key order already: then there is nothing to sort or check.
        if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            return Ok(Attrs(pairs));
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(w[0].0.clone());
        }
        Ok(Attrs(pairs))
    }

    /// The keys whose values differ between `self` (before) and `after`, as JSON values, with absence and
    /// `null` the same: their values before and after (`null` where absent). One walk over both sorted lists.
    pub fn diff(&self, after: &Attrs) -> (Attrs, Attrs) {
        use std::cmp::Ordering;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.0, &after.0);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let (key, x, y) = match order {
                Ordering::Less => (&a[i].0, Some(&a[i].1), None),
                Ordering::Greater => (&b[j].0, None, Some(&b[j].1)),
                Ordering::Equal => (&a[i].0, Some(&a[i].1), Some(&b[j].1)),
            };
            i += usize::from(order != Ordering::Greater);
            j += usize::from(order != Ordering::Less);
            if !crate::json::opt_json_eq(x, y) {
                old.push((key.clone(), x.cloned().unwrap_or(Value::Null)));
                new.push((key.clone(), y.cloned().unwrap_or(Value::Null)));
            }
        }
        (Attrs(old), Attrs(new))
    }

    /// As a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}

/// Serializes attributes as a JSON object in key order (output records), where [`Attrs`]' own
/// `Serialize` stores them as JSON text.
///
/// # Errors
/// Those of the serializer.
pub fn serialize_as_object<S: Serializer>(attrs: &Attrs, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(attrs.0.len()))?;
    for (k, v) in &attrs.0 {
        map.serialize_entry(k.as_str(), v)?;
    }
    map.end()
}

impl Serialize for Attrs {
    /// Stored as JSON text, so that binary codecs that are not self-describing can carry any value.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = Vec::with_capacity(16 + 24 * self.0.len());
        crate::output::ndjson::object(&mut text, self);
        // Written from `str`s and serde_json's own output: UTF-8 only.
        let text = String::from_utf8(text).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let map: Map<String, Value> = serde_json::from_str(&text).map_err(serde::de::Error::custom)?;
        Ok(Attrs(map.into_iter().map(|(k, v)| (Id::from(k), v)).collect()))
    }
}

impl From<Map<String, Value>> for Attrs {
    fn from(map: Map<String, Value>) -> Attrs {
        Attrs(map.into_iter().map(|(k, v)| (Id::from(k), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_overwrites_and_null_removes() {
        let mut a = Attrs::from(json!({"x": 1, "y": 2}).as_object().cloned().unwrap_or_default());
        a.merge(&Attrs::from(json!({"y": null, "z": [1]}).as_object().cloned().expect("object")));
        assert_eq!(Attrs::from_pairs(vec![("b".into(), json!(1)), ("b".into(), json!(2))]), Err("b".into()));
        assert_eq!(Value::Object(a.to_map()), json!({"x": 1, "z": [1]}));
        let text = serde_json::to_string(&a).expect("serializes");
        let back: Attrs = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, a);
    }

    fn small_attrs() -> impl proptest::strategy::Strategy<Value = Attrs> {
        use proptest::prelude::*;
        let value = prop_oneof![Just(json!(1)), Just(json!(1.0)), Just(json!(2)), Just(json!("a")), Just(json!(null))];
        proptest::collection::btree_map("[a-e]", value, 0..5)
            .prop_map(|m| Attrs::from_pairs(m.into_iter().map(|(k, v)| (Id::from(k), v)).collect()).expect("unique"))
    }

    proptest::proptest! {
        /// The undo log of an upsert stands for a copy of the attributes before it: the same merge, the same
        /// diff, and undoing restores them exactly.
        #[test]
        fn an_undo_log_stands_for_the_attributes_before(old in small_attrs(), upsert in small_attrs()) {
            let mut merged = old.clone();
            merged.merge(&upsert);
            let mut logged = old.clone();
            let log = logged.merge_undoable(&upsert);
            proptest::prop_assert_eq!(&logged, &merged);
            proptest::prop_assert_eq!(logged.diff_undone(&log), old.diff(&merged));
            logged.undo(log);
            proptest::prop_assert_eq!(logged, old);
        }

        /// The walk finds exactly the keys a lookup of every key of either side finds different.
        #[test]
        fn diff_lists_every_changed_key_once(old in small_attrs(), new in small_attrs()) {
            let (before, after) = old.diff(&new);
            let mut keys: Vec<&str> = old.iter().chain(new.iter()).map(|(k, _)| k).collect();
            keys.sort_unstable();
            keys.dedup();
            let changed: Vec<&str> = keys.into_iter()
                .filter(|k| !crate::json::opt_json_eq(old.get(k), new.get(k)))
                .collect();
            proptest::prop_assert_eq!(before.iter().map(|(k, _)| k).collect::<Vec<_>>(), changed.clone());
            proptest::prop_assert_eq!(after.iter().map(|(k, _)| k).collect::<Vec<_>>(), changed.clone());
            for k in changed {
                proptest::prop_assert_eq!(before.get(k), Some(old.get(k).unwrap_or(&Value::Null)));
                proptest::prop_assert_eq!(after.get(k), Some(new.get(k).unwrap_or(&Value::Null)));
            }
        }
    }
}
