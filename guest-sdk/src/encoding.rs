//! How a message type is encoded, chosen per type.
//!
//! Messages between reactors are [postcard](https://docs.rs/postcard) by
//! default: compact and fast, but not self-describing. A type whose
//! `Deserialize` has to look at the data to know what it is — `serde_json::Value`,
//! `#[serde(untagged)]` and `#[serde(flatten)]` types, anything that calls
//! `deserialize_any` — encodes with postcard and then fails to decode
//! ("WontImplement"). Wrap such a type in [`Json`]: it travels as JSON
//! inside the message, which round-trips any serde type JSON can hold, at
//! the price of size and speed. The choice is per type, so a message enum
//! can keep postcard for its hot variants and carry a document as
//! `Json<serde_json::Value>` in one of them:
//!
//! ```ignore
//! use guest_sdk::prelude::*;
//! use guest_sdk::Json;
//!
//! #[derive(Serialize, Deserialize)]
//! enum Msg {
//!     Count(u64),                          // postcard
//!     Store(String, Json<serde_json::Value>), // JSON inside
//! }
//! ```
//!
//! From the command line (JSON text) a `Json<T>` is written as `T` itself:
//! `{"Store": ["a", {"any": ["json", 1]}]}`.
use core::fmt;
use core::marker::PhantomData;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};

/// A value encoded as JSON inside a binary (postcard) message; itself in a
/// JSON text message. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> core::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> core::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(v: T) -> Self {
        Json(v)
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.0.serialize(s);
        }
        let bytes = serde_json::to_vec(&self.0).map_err(S::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return T::deserialize(d).map(Json);
        }
        d.deserialize_bytes(JsonBytes(PhantomData))
    }
}

/// Reads the JSON bytes of a [`Json`] from a binary format.
struct JsonBytes<T>(PhantomData<T>);

impl<T: DeserializeOwned> Visitor<'_> for JsonBytes<T> {
    type Value = Json<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the bytes of a JSON document")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        serde_json::from_slice(v).map(Json).map_err(|e| E::custom(alloc::format!("json inside: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;
    use serde_json::{Value, json};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Count(u64),
        Store(String, Json<Value>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(u64),
        Words(Vec<String>),
    }

    fn doc() -> Value {
        json!({"name": "a", "tags": ["x", "y"], "n": 1.5, "nested": {"ok": true, "none": null}})
    }

    #[test]
    fn a_self_describing_value_fails_in_postcard_and_round_trips_as_json() {
        // The failure this wrapper exists for.
        let bare = postcard::to_allocvec(&doc()).unwrap();
        assert!(postcard::from_bytes::<Value>(&bare).is_err());
        let m = Msg::Store("k".into(), Json(doc()));
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Msg>(&bytes).unwrap(), m);
        // Other variants stay postcard.
        assert_eq!(postcard::to_allocvec(&Msg::Count(300)).unwrap(), vec![0, 0xac, 0x02]);
        // Untagged enums too.
        for l in [Loose::Number(7), Loose::Words(vec!["a".into()])] {
            let b = postcard::to_allocvec(&Json(&l)).unwrap();
            assert_eq!(postcard::from_bytes::<Json<Loose>>(&b).unwrap().0, l);
        }
    }

    #[test]
    fn in_json_text_it_is_the_value_itself() {
        let m = Msg::Store("k".into(), Json(doc()));
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"Store": ["k", doc()]}));
        assert_eq!(serde_json::from_str::<Msg>(&text).unwrap(), m);
    }

    #[test]
    fn damaged_json_inside_is_an_error_not_a_panic() {
        let mut bytes = postcard::to_allocvec(&Json(doc())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = b'{';
        let e = postcard::from_bytes::<Json<Value>>(&bytes).unwrap_err();
        assert!(!alloc::format!("{e}").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = postcard::from_bytes::<Json<Value>>(&bytes);
        }

        #[test]
        fn strings_and_numbers_round_trip(s in ".*", n in proptest::prelude::any::<i64>()) {
            let v = json!({"s": s, "n": n});
            let b = postcard::to_allocvec(&Json(v.clone())).unwrap();
            proptest::prop_assert_eq!(postcard::from_bytes::<Json<Value>>(&b).unwrap().0, v);
        }
    }
}
